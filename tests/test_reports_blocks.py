import base64

import pytest

from fashionclf.study.blocks import Figure, Heading, Paragraph, Table, render_html, render_markdown, write_blocks

PNG = b"\x89PNG\r\n\x1a\nnot really an image"


def test_headings_render_at_their_level():
    blocks = [Heading("Title", 1), Heading("Section")]
    assert render_markdown(blocks) == "# Title\n\n## Section\n"
    html = render_html(blocks, "t")
    assert "<h1>Title</h1>\n<h2>Section</h2>" in html


def test_paragraph_bold_becomes_b_and_text_is_escaped_in_html():
    p = Paragraph("Recommended: **mlp** because 1 < 2 & <script>")
    assert render_markdown([p]) == "Recommended: **mlp** because 1 < 2 & <script>\n"
    html = render_html([p], "a <title>")
    assert "<p>Recommended: <b>mlp</b> because 1 &lt; 2 &amp; &lt;script&gt;</p>" in html
    assert "<title>a &lt;title&gt;</title>" in html and "<script>" not in html


def test_table_renders_header_separator_and_rows():
    t = Table(["model", "acc <%>"], [["mlp", 0.9], ["cnn", 12]])
    assert render_markdown([t]) == "| model | acc <%> |\n|---|---|\n| mlp | 0.9 |\n| cnn | 12 |\n"
    html = render_html([t], "t")
    rows = ["<table><tr><th>model</th><th>acc &lt;%&gt;</th></tr>", "<tr><td>mlp</td><td>0.9</td></tr>", "<tr><td>cnn</td><td>12</td></tr>"]
    assert "\n".join([*rows, "</table>"]) in html


def test_figure_links_the_file_in_markdown_and_inlines_it_in_html():
    f = Figure("curves.png", PNG, "learning <curves>")
    assert render_markdown([f]) == "![learning <curves>](figures/curves.png)\n"
    html = render_html([f], "t")
    data = base64.b64encode(PNG).decode()
    assert f"<img src='data:image/png;base64,{data}' alt='learning &lt;curves&gt;'>" in html
    assert "<figcaption>learning &lt;curves&gt;</figcaption>" in html and "curves.png" not in html


def test_blocks_are_frozen_and_unknown_blocks_are_refused():
    with pytest.raises(AttributeError):
        Paragraph("x").text = "y"  # type: ignore[misc]
    with pytest.raises(TypeError, match="not a report block"):
        render_markdown([("p", "an old tuple block")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a report block"):
        render_html([("p", "an old tuple block")], "t")  # type: ignore[list-item]


def test_write_blocks_writes_markdown_html_and_figures(tmp_path):
    blocks = [Heading("Report", 1), Paragraph("**bold**"), Figure("a.png", PNG, "a"), Figure("b.png", PNG + b"b", "b")]
    paths = write_blocks(tmp_path / "out", blocks, "title", stem="summary")
    out = tmp_path / "out"
    assert paths == [out / "summary.md", out / "summary.html"]
    assert (out / "summary.md").read_text() == render_markdown(blocks)
    assert (out / "summary.html").read_text() == render_html(blocks, "title")
    assert (out / "figures" / "a.png").read_bytes() == PNG and (out / "figures" / "b.png").read_bytes() == PNG + b"b"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.png", "b.png", "summary.html", "summary.md"]
