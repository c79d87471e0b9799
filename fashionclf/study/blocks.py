"""Report blocks and their two renderings.

A report is built once as a list of typed blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown with the PNG files beside it in figures/, and one self-contained HTML
file with the same figures inlined.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashionclf.core.io import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Heading:
    """A section title; level 1 is the report's title, level 2 a section."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Prose; the only Markdown in it is **bold**."""

    text: str


@dataclass(frozen=True)
class Table:
    """A header row and rows of cells (any value; rendered with str())."""

    head: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True)
class Figure:
    """A PNG image, written as figures/<filename> beside the Markdown and inlined in the HTML."""

    filename: str
    png: bytes
    caption: str


Block = Heading | Paragraph | Table | Figure


def render_markdown(blocks: Iterable[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        match b:
            case Heading(text, level):
                out.append(f"{'#' * level} {text}\n")
            case Paragraph(text):
                out.append(text + "\n")
            case Table(head, rows):
                out.append("| " + " | ".join(head) + " |")
                out.append("|" + "---|" * len(head))
                out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
                out.append("")
            case Figure(filename, _, caption):
                out.append(f"![{caption}](figures/{filename})\n")
            case _:
                raise TypeError(f"not a report block: {b!r}")
    return "\n".join(out)


def md_inline(text: str) -> str:
    """The little Markdown the report uses in paragraphs, as HTML: **bold** only; everything else escaped."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f4f4f4}td:first-child{text-align:left}img{max-width:100%}</style></head><body>"
)


def render_html(blocks: Iterable[Block], title: str) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>", _STYLE]
    for b in blocks:
        match b:
            case Heading(text, level):
                out.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Paragraph(text):
                out.append(f"<p>{md_inline(text)}</p>")
            case Table(head, rows):
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            case Figure(_, png, caption):
                data = base64.b64encode(png).decode()
                cap = html.escape(caption)
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{cap}'><figcaption>{cap}</figcaption></figure>")
            case _:
                raise TypeError(f"not a report block: {b!r}")
    out.append("</body></html>")
    return "\n".join(out)


def write_blocks(out: str | Path, blocks: Sequence[Block], title: str, stem: str = "report") -> list[Path]:
    """Write out/figures/*.png, out/<stem>.md and out/<stem>.html (each atomically); returns the two reports."""
    out = Path(out)
    for b in blocks:
        if isinstance(b, Figure):
            atomic_write_bytes(out / "figures" / b.filename, b.png)
    atomic_write_text(out / f"{stem}.md", render_markdown(blocks))
    atomic_write_text(out / f"{stem}.html", render_html(blocks, title))
    return [out / f"{stem}.md", out / f"{stem}.html"]
