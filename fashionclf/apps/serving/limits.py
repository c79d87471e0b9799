"""The service's limits in one place: request bodies read with a hard byte cap, a pixel budget checked from
image headers, and a bounded pool of worker threads for decoding, preprocessing and inference.

A route that takes images does, in this order (app.py's /v1/predict is the example to copy):

    async with admitted(gate, limits) as ticket:           # one deadline for the whole request: 408 / 504
        blobs = await read_images(request, limits, ticket)  # 413 past --max-body-mb, whatever the transfer encoding
        result = await ticket.run(work, blobs, ...)         # 503 + Retry-After when the queue is full

and `work` calls `check_pixels(blobs, limits)` before it decodes anything. Every refusal is a RequestError,
which app.py answers as JSON {"error": message} with its status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import math
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fashionclf.apps.serving import memory
from fashionclf.data.images import ImageError, image_size

MB = 1024 * 1024
STATUS = {"empty": 400, "unsupported": 415, "too_large": 413, "damaged": 422, "missing": 400}  # ImageError.kind -> HTTP


def _limit(default, help: str, lo: float):
    return field(default=default, metadata={"help": help, "lo": lo})


@dataclass(frozen=True)
class Limits:
    """Every bound of the service; each field is a `serve` flag (--max-body-mb ...) and a create_app keyword."""

    max_body_mb: float = _limit(20.0, "largest request body in MB, whatever the transfer encoding (413 past it)", 0.001)
    max_files: int = _limit(64, "most images (multipart parts or JSON instances) in one request (413 past it)", 1)
    max_pixels_per_image: int = _limit(16_000_000, "most pixels in one image, read from its header before decoding (413)", 1)
    max_pixels_per_request: int = _limit(50_000_000, "most pixels in all the images of one request, from their headers (413)", 1)
    workers: int = _limit(2, "threads that decode, preprocess and classify (inference itself runs one at a time)", 1)
    queue: int = _limit(32, "requests that may wait for a worker; more get 503 with Retry-After", 0)
    timeout_s: float = _limit(30.0, "seconds a request may take from its first byte to its answer (408 reading, 504 after)", 0.01)
    max_buffered_mb: float = _limit(112.0, "request bodies held in memory at once, all requests together (503 past it)", 0.001)
    max_decode_mb: float = _limit(
        180.0,
        "memory for decoding images, all workers together, from each image's header and format (an image waits "
        "for room; 413 for one that alone needs more)",
        1,
    )

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < f.metadata["lo"]:
                raise ValueError(f"{flag(f.name)} {v!r}: expected a finite number of at least {f.metadata['lo']}")
            if f.type == "int" and not isinstance(v, int):
                raise ValueError(f"{flag(f.name)} {v!r}: expected a whole number")
        if self.max_body_mb > self.max_buffered_mb:
            raise ValueError(f"--max-body-mb {self.max_body_mb:g} is above --max-buffered-mb {self.max_buffered_mb:g}: none would fit")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MB)

    def ceiling_mb(self, resident_mb: float) -> float:
        """The most memory the service can hold, given its resident size with the run loaded and warmed up: every body
        held at once, one more copy of the largest while its multipart parts are joined, the decoding budget, and
        what each worker's heap may keep of decodes too small to be trimmed after (Gate.decoding)."""
        kept = self.workers * memory.TRIM_AFTER_DECODE_MB
        return resident_mb + self.max_buffered_mb + self.max_body_mb + self.max_decode_mb + kept


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class RequestError(Exception):
    """A refusal: the HTTP status, one line saying what was wrong and what to do, and extra response headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def busy(message: str) -> RequestError:
    return RequestError(503, f"{message}; retry shortly", {"Retry-After": "1"})


class Gate:
    """The worker pool and the bounds in front of it: queued jobs, body bytes held in memory, and decoding memory.

    trim: when the pool falls idle after jobs that decoded at least memory.TRIM_AFTER_PIXELS, hand the freed heap
    back to the system (a burst's decode buffers would otherwise stay resident; docs/serve-export.md).
    """

    def __init__(self, limits: Limits, trim: bool = False):
        self.limits, self.trim = limits, trim
        self.decoded = 0  # pixels decoded since the last trim
        self.pool: ThreadPoolExecutor | None = None  # started on first use, again after close (an app served twice)
        self.capacity = limits.workers + limits.queue  # jobs running or waiting
        self.lock = threading.Lock()
        self.jobs = 0
        self.buffered = 0
        self.decode_bytes = 0  # what the images being decoded now may cost (decode_cost), under --max-decode-mb
        self.room = threading.Condition(self.lock)  # notified when a decode ends

    def check_decodes(self, costs: list[int], first: int = 0) -> None:
        """413 for the first image (numbered from `first`) whose decoding alone needs more than --max-decode-mb."""
        lim = self.limits
        for index, cost in enumerate(costs, first):
            if cost > lim.max_decode_mb * MB:
                raise RequestError(
                    413,
                    f"image {index}: decoding it takes about {cost / MB:.0f} MB (its size, format and colour mode), above "
                    f"--max-decode-mb {lim.max_decode_mb:g}; send it smaller or as an 8-bit JPEG, or raise --max-decode-mb",
                )

    @contextlib.contextmanager
    def decoding(self, cost: int, index: int):
        """Hold `cost` bytes of the decoding budget while one image is decoded and converted: wait for room (a photo
        at the pixel limit decodes alone), 503 when none comes within --timeout-s, 413 for an image that alone
        needs more than the whole budget."""
        lim = self.limits
        self.check_decodes([cost], index)
        deadline = time.monotonic() + lim.timeout_s
        with self.room:
            while self.decode_bytes + cost > lim.max_decode_mb * MB:
                left = deadline - time.monotonic()
                if left <= 0 or not self.room.wait(left):
                    raise busy(f"other images are being decoded (--max-decode-mb {lim.max_decode_mb:g})")
            self.decode_bytes += cost
        try:
            yield
        finally:
            if self.trim and cost >= memory.TRIM_AFTER_DECODE_MB * MB:
                # before the next decode starts: on another worker thread it would take another malloc arena,
                # and this one's freed pages would stay resident beside it (measured: two decodes' worth)
                memory.trim_heap()
            with self.room:
                self.decode_bytes -= cost
                self.room.notify_all()

    def submit(self, fn, *args):
        with self.lock:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="fashionclf-worker")
            return self.pool.submit(fn, *args)

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class Ticket:
    """One request's place: the body bytes it holds and the job it runs, released when both are done."""

    def __init__(self, gate: Gate):
        self.gate, self.held, self.phase = gate, 0, "reading the request body"
        self._owners = 1  # the request; a running job adds one

    def hold(self, n: int) -> None:
        g = self.gate
        with g.lock:
            if g.buffered + n > g.limits.max_buffered_mb * MB:
                raise busy(f"{g.buffered / MB:.0f} MB of request bodies are being held (--max-buffered-mb {g.limits.max_buffered_mb:g})")
            g.buffered += n
            self.held += n

    def _release(self) -> None:
        g = self.gate
        with g.lock:
            self._owners -= 1
            if self._owners == 0:
                g.buffered -= self.held
                self.held = 0

    async def run(self, fn, *args):
        """fn(*args) on a worker thread; 503 at once when --workers + --queue jobs are already there."""
        g = self.gate
        with g.lock:
            if g.jobs >= g.capacity:
                raise busy(f"{g.jobs} requests are being processed or queued (--workers {g.limits.workers} + --queue {g.limits.queue})")
            g.jobs += 1
            self._owners += 1

        def done(_):
            with g.lock:
                g.jobs -= 1
                trim = g.trim and g.jobs == 0 and g.decoded >= memory.TRIM_AFTER_PIXELS
                if trim:
                    g.decoded = 0
            self._release()
            if trim:
                memory.trim_heap()  # on the worker thread that finished last

        self.phase = "waiting for a worker or being processed"
        try:
            fut = g.submit(fn, *args)
        except BaseException:
            done(None)
            raise
        answer = asyncio.wrap_future(fut)  # cancelled on timeout: a job still queued is then dropped
        # after wrap_future's own callback, so the answer is on its way before a trim; a job that times out still
        # holds its place until its thread finishes
        fut.add_done_callback(done)
        return await answer

    def close(self) -> None:
        self._release()


@contextlib.asynccontextmanager
async def admitted(gate: Gate, limits: Limits) -> AsyncIterator[Ticket]:
    """A ticket under one deadline of --timeout-s for reading, queueing and processing."""
    ticket = Ticket(gate)
    try:
        async with asyncio.timeout(limits.timeout_s):
            yield ticket
    except TimeoutError:
        status = 408 if ticket.phase.startswith("reading") else 504
        raise RequestError(status, f"no answer within {limits.timeout_s:g} s (--timeout-s) while {ticket.phase}") from None
    finally:
        ticket.close()


def too_big(limits: Limits, size: int | None = None) -> RequestError:
    what = f"request body of {size:,d} bytes" if size is not None else "request body"
    return RequestError(
        413,
        f"{what} is above the limit of {limits.max_body_bytes:,d} bytes (--max-body-mb {limits.max_body_mb:g})",
        {"Connection": "close"},  # the rest of the body is never read: the server drops the connection
    )


async def capped_stream(request, limits: Limits, ticket: Ticket) -> AsyncIterator[bytes]:
    """The body as it arrives, refused with 413 the moment it passes the cap (Content-Length or chunked alike)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big(limits, int(declared))
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limits.max_body_bytes:
            raise too_big(limits)
        ticket.hold(len(chunk))
        yield chunk


async def read_images(request, limits: Limits, ticket: Ticket) -> list[bytes]:
    """The image bytes of a /v1/predict request: multipart `file` fields, or KServe V1 JSON {"instances": [{"b64"}]}."""
    from starlette.requests import ClientDisconnect

    try:
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return await _read_multipart(request, limits, ticket)
        body = bytearray()
        async for chunk in capped_stream(request, limits, ticket):
            body += chunk
        return parse_instances(bytes(body), limits)
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the body was complete") from None


async def _read_multipart(request, limits: Limits, ticket: Ticket) -> list[bytes]:
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(request.headers["content-type"])
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary in its Content-Type")
    parts = _Parts(limits)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in capped_stream(request, limits, ticket):
            parser.write(chunk)
        parser.finalize()
    except ValueError as e:  # python-multipart's FormParserError and MultipartParseError
        raise RequestError(400, f"malformed multipart body ({e})") from None
    if not parts.ended:
        raise RequestError(400, "the multipart body ended before its closing boundary")
    if not parts.files:
        raise RequestError(400, f"expected one or more 'file' fields with images; got fields {sorted(set(parts.names)) or 'none'}")
    return [bytes(f) for f in parts.files]


class _Parts:
    """Callbacks for python-multipart's streaming parser: keeps the data of `file` parts only, in memory."""

    def __init__(self, limits: Limits):
        self.limits, self.files, self.names, self.ended = limits, [], [], False
        self.count = 0
        self._field, self._value, self._headers, self._current = bytearray(), bytearray(), {}, None

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in dir(self) if name.startswith("on_")}

    def on_part_begin(self):
        self._headers, self._current = {}, None

    def on_header_field(self, data, start, end):
        self._field += data[start:end]

    def on_header_value(self, data, start, end):
        self._value += data[start:end]

    def on_header_end(self):
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def on_headers_finished(self):
        from python_multipart.multipart import parse_options_header

        self.count += 1
        if self.count > self.limits.max_files:
            n = self.limits.max_files
            raise RequestError(413, f"more than {n} parts; at most {n} images per request (--max-files)")
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("latin-1")
        if name != "file":
            self.names.append(name)
            return
        if b"filename" not in opts and b"filename*" not in opts:
            raise RequestError(400, "the 'file' field must be an uploaded file, not text")
        self._current = bytearray()
        self.files.append(self._current)

    def on_part_data(self, data, start, end):
        if self._current is not None:
            self._current += data[start:end]

    def on_end(self):
        self.ended = True


def parse_instances(body: bytes, limits: Limits) -> list[bytes]:
    """The images of a KServe V1 body {"instances": [{"b64": "..."}, ...]}."""
    if not body:
        raise RequestError(400, 'empty request: send multipart \'file\' fields or JSON {"instances": [{"b64": "..."}]}')
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nesting deeper than the parser's stack
        raise RequestError(400, "the body is neither multipart/form-data nor JSON") from None
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, 'expected JSON {"instances": [{"b64": "<base64 image>"}, ...]} with at least one instance')
    if len(instances) > limits.max_files:
        raise RequestError(413, f"{len(instances)} instances; at most {limits.max_files} per request (--max-files)")
    blobs = []
    for i, inst in enumerate(instances):
        b64 = inst.get("b64") if isinstance(inst, dict) else None
        if not isinstance(b64, str):
            raise RequestError(400, f'instance {i}: expected an object {{"b64": "<base64 image>"}}')
        try:
            blobs.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"instance {i}: malformed base64") from None
    return blobs


def check_pixels(blobs: list[bytes], limits: Limits) -> int:
    """Refuse, from the image headers alone, any image or request above its pixel budget (nothing is decoded);
    the request's pixels in all when within budget."""
    total = 0
    for i, blob in enumerate(blobs):
        try:
            w, h = image_size(blob)
        except ImageError as e:
            raise RequestError(STATUS.get(e.kind, 422), f"image {i}: {e}") from None
        if w * h > limits.max_pixels_per_image:
            raise RequestError(
                413,
                f"image {i}: {w}x{h} = {w * h:,d} pixels is above the limit of {limits.max_pixels_per_image:,d} per image "
                f"(--max-pixels-per-image); downscale it first",
            )
        total += w * h
        if total > limits.max_pixels_per_request:
            raise RequestError(
                413,
                f"images 0-{i}: {total:,d} pixels in all is above the limit of {limits.max_pixels_per_request:,d} per request "
                f"(--max-pixels-per-request); send fewer or smaller images per request",
            )
    return total
