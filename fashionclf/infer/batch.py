"""Catalogue-sized prediction into a file: streaming, bounded memory, resumable.

Results go to `<out>.partial` a batch at a time (flushed and fsynced), beside a small JSON file that
records what the job is (run, inputs, options). When every file is done, the partial file is renamed to
`<out>`: a file under the final name is always complete. After an interruption, the same command finds
the partial file, checks that it belongs to the same job, drops a half-written last line, skips the
files already written and appends the rest; the result is byte for byte what an uninterrupted job
writes, because files are processed in a fixed (sorted) order and every line depends on its file alone.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from fashionclf.core.io import atomic_write_text
from fashionclf.engine.runs import LoadedRun
from fashionclf.infer.predict import predict_files

# unknown, unknown_score last, so the earlier columns keep their places; an unknown item's label is empty
CSV_FIELDS = ["file", "label", "index", "confidence", "needs_review", "top_k", "error", "unknown", "unknown_score"]


class JobError(ValueError):
    """A resumable job that does not fit its partial file (another run, other inputs or options)."""


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"--out {path}: expected a .jsonl or .csv file name (the format follows the suffix)")


def format_row(row: dict, fmt: str) -> str:
    """One result as one record, ending with a newline (in CSV a quoted file name may hold newlines too)."""
    if fmt == "jsonl":
        return json.dumps(row) + "\n"  # ASCII: a newline or U+2028 in a name is escaped
    flat = {**row, "top_k": json.dumps(row["top_k"]) if "top_k" in row else ""}
    return _csv_record([flat.get(k, "") for k in CSV_FIELDS])


def _csv_record(values: list) -> str:
    # Written with "\r\n" so that the writer also quotes a field holding a bare carriage return (with "\n" alone
    # it would not, and every reader would cut the record there), then ended with "\n" as before.
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue()[:-2] + "\n"


def _jsonl_records(text: str) -> tuple[list[str], int]:
    end = text.rfind("\n") + 1
    return [json.loads(line)["file"] for line in text[:end].split("\n") if line], end


def _csv_records(text: str) -> tuple[list[str], int]:
    """The files of the complete records, and where they end. Parsed with the csv module over the whole text (a
    quoted name may hold a newline, a carriage return or U+2028, which a split into lines would cut); a record
    counts only if writing it again gives exactly its text, so a half-written last one is left out."""
    header = _csv_record(CSV_FIELDS)
    pos = len(header) if text.startswith(header) else 0
    files = []
    try:
        for row in csv.reader(io.StringIO(text[pos:], newline="")):
            record = _csv_record(row)
            if len(row) != len(CSV_FIELDS) or not text.startswith(record, pos):
                break
            files.append(row[0])
            pos += len(record)
    except csv.Error:  # an unterminated quote at the end: half a record
        pass
    return files, pos


def _job_id(run: LoadedRun, paths: list[Path], options: dict) -> dict:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\n")
    return {"run": run.meta.get("created", ""), "model": run.meta["model"], "files": len(paths), "paths_sha256": h.hexdigest(), **options}


ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # file names that are not UTF-8 survive the round trip


def _resume(partial: Path, fmt: str) -> list[str]:
    """Files already in the partial output, in order; a half-written last record (killed mid-write) is cut off."""
    with open(partial, "rb+") as f:
        data = f.read()
        text = data.decode(**ENCODING)  # surrogateescape: the bytes of the kept text are exactly a prefix of data
        files, end = _csv_records(text) if fmt == "csv" else _jsonl_records(text)
        keep = len(text[:end].encode(**ENCODING))
        if keep != len(data):
            f.truncate(keep)
    return files


def predict_to_file(
    run: LoadedRun,
    paths: list[Path],
    out: str | Path,
    top_k: int = 3,
    batch_size: int = 64,
    method: str = "grabcut",
    save_preprocessed: str | Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    backend=None,
    also: list[LoadedRun] = (),
) -> dict:
    """Predict every path into out (.jsonl or .csv); returns counts {done, skipped_done, failed, resumed}.

    on_batch(files_written_so_far, total) is called after each batch is on disk (progress bars; tests use
    it to interrupt a job).
    """
    out = Path(out)
    fmt = output_format(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose another file (results are never overwritten)")
    partial, job_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.json")
    options = {"top_k": top_k, "method": method, "format": fmt}
    if also:  # only then, so that a job left unfinished by an older version still resumes
        options["with"] = [r.meta.get("created", str(r.path)) for r in also]
    job = _job_id(run, paths, options)
    done: list[str] = []
    resumed = partial.exists()
    if resumed:
        old = json.loads(job_file.read_text()) if job_file.exists() else None
        if old != job:
            diff = sorted(k for k in job if old is None or old.get(k) != job[k])
            raise JobError(
                f"{partial} is an unfinished job with other settings ({', '.join(diff)} differ); "
                f"finish it with the same command, or delete {partial} and {job_file} to start again"
            )
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job_file, json.dumps(job, indent=1) + "\n")
    with open(partial, "a", newline="", **ENCODING) as f:
        try:  # one writer per job: a second copy of the command would interleave its lines with ours
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another process is writing {partial} (the same job started twice); wait for it to finish") from None
        if resumed:
            done = _resume(partial, fmt)
            # Lines are written in input order, so what is done is a prefix of the inputs (duplicates included).
            if done != [str(p) for p in paths[: len(done)]]:
                raise JobError(f"{partial} does not hold a prefix of this job's files; delete it and {job_file} to start again")
        todo = paths[len(done) :]
        counts = {"done": 0, "skipped_done": len(done), "failed": 0, "resumed": resumed}
        if partial.stat().st_size == 0 and fmt == "csv":  # also after a kill that left an empty partial file
            _flush(f, [_csv_record(CSV_FIELDS)])
        written = counts["skipped_done"]
        lines: list[str] = []
        for row in predict_files(
            run, todo, top_k=top_k, batch_size=batch_size, save_preprocessed=save_preprocessed, method=method, backend=backend, also=also
        ):
            counts["failed" if "error" in row else "done"] += 1
            lines.append(format_row(row, fmt))
            if len(lines) == batch_size:
                written += _flush(f, lines)
                if on_batch is not None:
                    on_batch(written, len(paths))
        written += _flush(f, lines)
        if on_batch is not None:
            on_batch(written, len(paths))
    os.replace(partial, out)
    job_file.unlink(missing_ok=True)
    return counts


def _flush(f, lines: list[str]) -> int:
    n = len(lines)
    if n:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
        lines.clear()
    return n
