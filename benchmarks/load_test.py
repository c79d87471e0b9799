"""Load test of `fashionclf serve`: single-image requests over loopback, the service's attack cases, and its memory.

Starts the real server as its own process (so its resident memory can be read from /proc, sampled every 5 ms
by a thread), and only ever talks to 127.0.0.1. Three modes:

    # the soak: --requests POSTs per concurrency level, p50/p99, errors, RSS before / peak / after
    .venv/bin/python benchmarks/load_test.py RUN [--requests 5000] [--concurrency 1,32] [--image FILE] [--backend torch] \
        [--out benchmarks/results/load_test.json]
    # the attack cases with default limits: chunked upload past the cap, 64 bomb PNGs, 1,000 requests at concurrency 100
    .venv/bin/python benchmarks/load_test.py RUN --attacks [--chunked-mb 200] --out benchmarks/results/serve_attacks.json
    # glibc's allocator for serve: FASHIONCLF_SERVE_MALLOC=keep, release, trim, three servers measured in turns
    .venv/bin/python benchmarks/load_test.py RUN --malloc-ab [--rounds 3] --out benchmarks/results/serve_malloc.json

Exits non-zero on any error (the soak), or when an attack case answers otherwise than expected.
CI runs a short soak: tests/test_load.py (300 requests at concurrency 16).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The process's resident memory every `every` seconds while the block runs: .start, .peak, .end in MB."""

    def __init__(self, pid: int, every: float = 0.005):
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, ValueError):
                return
            self._stop.wait(self.every)

    def __enter__(self):
        self.start = self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.end = rss_mb(self.pid)
        self.peak = max(self.peak, self.end)


def multipart(images: bytes | list[bytes], name: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for i, image in enumerate([images] if isinstance(images, bytes) else images):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}-{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _header(run: str) -> dict:
    """What every result file starts with: when, where, and which run."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "run": run,
    }


def start_server(run: str, port: int, backend: str = "torch", args=(), env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fashionclf", "serve", run, "--port", str(port), "--backend", backend, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(port: int, body: bytes, ctype: str, requests: int, concurrency: int, expect_busy: bool = False) -> dict:
    """requests POSTs spread over concurrency threads; latencies in ms. An error is any answer but 200, except
    503 with Retry-After when expect_busy (the queue doing its job under overload)."""
    lat: list[float] = []
    errors: list[str] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            status = "exception"
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                status = r.status
                ok = (r.status == 200 and json.loads(data)["predictions"]) or (
                    expect_busy and r.status == 503 and r.getheader("Retry-After") and "error" in json.loads(data)
                )
                err = None if ok else f"HTTP {r.status}: {data[:200]!r}"
            except Exception as e:  # a dropped connection counts as an error, and the next request reconnects
                err = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(dt)
                statuses[str(status)] += 1
                if err:
                    errors.append(err)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat)
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "statuses": dict(statuses),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "requests_per_s": len(lat) / wall,
        "wall_s": wall,
    }


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def default_image() -> tuple[bytes, str]:
    """A Fashion-MNIST test image as a product thumbnail: dark item on white, PNG (the test set, not a photo)."""
    from fashionclf.data.fashion_mnist import load_fashion_mnist

    d = load_fashion_mnist(allow_download=False)
    return png(255 - d.test_x[0].numpy()), "fmnist-test-0.png"


def photo_like(side: int, seed: int = 0, height: int | None = None) -> bytes:
    """A side x side (or side x height) JPEG with texture (costs what a photo costs to decode): a dark item on a
    light ground."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h = height or side
    img = np.clip(rng.normal(235, 12, (h, side, 3)), 0, 255).astype(np.uint8)
    img[h // 5 : -h // 5, side // 3 : -side // 3] //= 4
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def health(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        return c.getresponse().status == 200
    except OSError:
        return False


def run_load_test(run: str, requests: int, concurrency: list[int], image: str | None, backend: str, warmup: int = 50) -> dict:
    body_img, name = (Path(image).read_bytes(), Path(image).name) if image else default_image()
    body, ctype = multipart(body_img, name)
    port = free_port()
    proc = start_server(run, port, backend)
    try:
        load(port, body, ctype, warmup, 1)  # first requests pay for lazy imports and allocator growth
        levels = []
        with RssSampler(proc.pid) as all_levels:
            for c in concurrency:
                with RssSampler(proc.pid) as s:
                    lv = load(port, body, ctype, requests, c)
                levels.append({**lv, "rss_mb_before": s.start, "rss_mb_peak": s.peak, "rss_mb_after": s.end})
        time.sleep(2)  # idle: whatever the allocator gives back, it has given
        return {
            **_header(run),
            "backend": backend,
            "image": name,
            "image_bytes": len(body_img),
            "server_pid_unchanged": proc.poll() is None,
            "healthy_after": health(port),
            "rss_mb_after_warmup": all_levels.start,
            "rss_mb_peak": all_levels.peak,
            "rss_mb_after_idle_2s": rss_mb(proc.pid),
            "levels": levels,
        }
    finally:
        stop_server(proc)


def chunked_upload(port: int, mb: int, path: str = "/v1/predict") -> dict:
    """Stream `mb` MB of zeros with Transfer-Encoding: chunked (no Content-Length) as JSON, 64 KiB a chunk,
    watching for the server's answer after every chunk: stops at the answer or when the server drops the line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
    sent, answer, t0 = 0, b"", time.perf_counter()
    try:
        sock.sendall(head.encode())
        for _ in range(mb * 16):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk)
            sent += 0x10000
        else:
            sock.sendall(b"0\r\n\r\n")
    except OSError as e:  # the server closed the connection after its 413: what it said is still in our buffer
        answer = f"[{type(e).__name__} after {sent / 2**20:.1f} MB] ".encode()
    data = b""
    try:
        sock.settimeout(10)
        while len(data) < 65536 and (got := sock.recv(65536)):  # the server closes after its answer
            data += got
    except OSError as e:
        data = data or f"[{type(e).__name__} reading]".encode()
    sock.close()
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return {
        "offered_mb": mb,
        "sent_mb_before_cut": sent / 2**20,
        "seconds": time.perf_counter() - t0,
        "status_line": line,
        "note": answer.decode(),
        "status": int(line.split()[1]) if line.startswith("HTTP/1.1 ") else None,
        "body": data.split(b"\r\n\r\n", 1)[-1][:300].decode(errors="replace"),
    }


def post(port: int, body: bytes, ctype: str, timeout: float = 120) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
    r = c.getresponse()
    return r.status, json.loads(r.read()), time.perf_counter() - t0


def bomb(side: int) -> bytes:
    """A side x side white PNG: a few hundred KB that decode to side*side*3 bytes and more."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def run_attacks(run: str, chunked_mb: int = 200, burst: int = 1000, burst_concurrency: int = 100) -> dict:
    """The issue's attack cases against one server with default limits; RSS sampled around each."""
    port = free_port()
    proc = start_server(run, port)
    cases = {}

    def case(name, fn, expect):
        with RssSampler(proc.pid) as s:
            out = fn()
        cases[name] = {**out, "expected": expect, "rss_mb_before": s.start, "rss_mb_peak": s.peak, "rss_mb_after": s.end}
        print(f"{name}: {json.dumps(cases[name])[:400]}", file=sys.stderr)

    try:
        small, _ = default_image()
        load(port, *multipart(small), 50, 1)  # warm-up
        case("chunked_upload", lambda: chunked_upload(port, chunked_mb), 413)
        one = bomb(7000)

        def bombs(images, expect):
            status, answer, dt = post(port, *multipart(images))
            return {"images": len(images), "request_bytes": sum(map(len, images)), "status": status, "answer": answer, "seconds": dt}

        case("one_7000x7000_png", lambda: bombs([one], 413), 413)
        case("64_7000x7000_pngs", lambda: bombs([one] * 64, 413), 413)
        case("64_3000x3000_pngs", lambda: bombs([bomb(3000)] * 64, 413), 413)  # each under the per-image limit
        photo = photo_like(1000)

        def flood():
            res = load(port, *multipart(photo, "photo.jpg"), burst, burst_concurrency, expect_busy=True)
            return {**res, "image_bytes": len(photo), "image": "1000x1000 JPEG"}

        case(f"{burst}_requests_at_concurrency_{burst_concurrency}", flood, "200 or 503 + Retry-After")
        time.sleep(2)
        ok = all(c["status"] == c["expected"] for c in cases.values() if isinstance(c["expected"], int))
        flood_case = cases[f"{burst}_requests_at_concurrency_{burst_concurrency}"]
        return {
            **_header(run),
            "limits": "defaults",
            "cases": cases,
            "rss_mb_after_idle_2s": rss_mb(proc.pid),
            "healthy_after": health(port),
            "all_as_expected": ok and flood_case["errors"] == 0,
        }
    finally:
        stop_server(proc)


MODES = ("keep", "release", "trim")


def run_malloc_ab(run: str, rounds: int = 3, requests: int = 1000, big: int = 16) -> dict:
    """FASHIONCLF_SERVE_MALLOC=keep, release and trim on three servers, measured in turns (the order rotates each
    round): p50 of small requests at concurrency 1, then `big` 3500x3500 (12 MP) photos at concurrency 2 and the
    RSS left 2 s after them."""
    small, _ = default_image()
    small_body = multipart(small)
    big_body = multipart(photo_like(3500), "photo.jpg")
    servers = {}
    try:
        for mode in MODES:
            port = free_port()
            servers[mode] = (port, start_server(run, port, env={"FASHIONCLF_SERVE_MALLOC": mode}))
            load(port, *small_body, 50, 1)
        rows = []
        for r in range(rounds):
            for mode in MODES[r % 3 :] + MODES[: r % 3]:
                port, proc = servers[mode]
                idle0 = rss_mb(proc.pid)
                small_run = load(port, *small_body, requests, 1)
                with RssSampler(proc.pid) as s:
                    big_run = load(port, *big_body, big, 2)
                time.sleep(2)
                row = {
                    "round": r,
                    "mode": mode,
                    "p50_ms_small": small_run["p50_ms"],
                    "p99_ms_small": small_run["p99_ms"],
                    "errors": small_run["errors"] + big_run["errors"],
                    "p50_ms_12mp": big_run["p50_ms"],
                    "rss_mb_idle_before": idle0,
                    "rss_mb_peak_12mp": s.peak,
                    "rss_mb_idle_2s_after": rss_mb(proc.pid),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        summary = {}
        for mode in MODES:
            mine = [x for x in rows if x["mode"] == mode]
            summary[mode] = {k: float(np.median([x[k] for x in mine])) for k in mine[0] if k not in ("round", "mode")}
        return {
            **_header(run),
            "rows": rows,
            "median": summary,
            "p50_ratio_over_keep": {m: summary[m]["p50_ms_small"] / summary["keep"]["p50_ms_small"] for m in MODES},
            "p50_12mp_ratio_over_keep": {m: summary[m]["p50_ms_12mp"] / summary["keep"]["p50_ms_12mp"] for m in MODES},
        }
    finally:
        for _, proc in servers.values():
            stop_server(proc)


def run_big_burst(run: str, n: int = 16, width: int = 4000, height: int = 3999, rounds: int = 2) -> dict:
    """n photos of width x height (a textured JPEG just under the 16-megapixel limit) sent at once, one per
    request on n client threads: every status, the p50, and the server's RSS before, at its peak and 2 s after."""
    jpeg = photo_like(width, height=height)
    body = multipart(jpeg, "photo.jpg")
    port = free_port()
    proc = start_server(run, port)
    try:
        load(port, *multipart(default_image()[0]), 5, 1)
        rows = []
        for r in range(rounds):
            before = rss_mb(proc.pid)
            with RssSampler(proc.pid) as s:
                res = load(port, *body, n, n)
            time.sleep(2)
            rows.append({"round": r, "rss_mb_before": before, "rss_mb_peak": s.peak, "rss_mb_after_2s": rss_mb(proc.pid), **res})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "latencies_ms"}), file=sys.stderr)
        return {
            **_header(run),
            "photos": n,
            "size": f"{width}x{height}",
            "jpeg_bytes": len(jpeg),
            "rows": rows,
            "rss_mb_peak": max(x["rss_mb_peak"] for x in rows),
            "healthy_after": health(port),
        }
    finally:
        stop_server(proc)


def print_soak(res: dict) -> None:
    head = f"{res['backend']} backend, {res['image']} ({res['image_bytes']:,d} bytes)"
    print(f"{head}; RSS after warm-up {res['rss_mb_after_warmup']:.0f} MB")
    print("| concurrency | requests | errors | p50 ms | p99 ms | req/s | RSS MB before / peak / after |\n|---|---|---|---|---|---|---|")
    for lv in res["levels"]:
        print(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | "
            f"{lv['requests_per_s']:.0f} | {lv['rss_mb_before']:.0f} / {lv['rss_mb_peak']:.0f} / {lv['rss_mb_after']:.0f} |"
        )
    print(f"RSS 2 s idle after: {res['rss_mb_after_idle_2s']:.0f} MB", end="; ")
    print(f"server process unchanged: {res['server_pid_unchanged']}, healthy after: {res['healthy_after']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "study/runs/tuned_cnn-s0"))
    ap.add_argument("--requests", type=int, default=5000, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated client thread counts")
    ap.add_argument("--image", help="image file to send (default: Fashion-MNIST test image 0 as a PNG thumbnail)")
    ap.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--attacks", action="store_true", help="run the attack cases instead of the soak")
    ap.add_argument("--chunked-mb", type=int, default=200, help="--attacks: MB offered in the chunked upload")
    ap.add_argument("--malloc-ab", action="store_true", help="compare FASHIONCLF_SERVE_MALLOC=keep, release and trim instead")
    ap.add_argument("--rounds", type=int, default=3, help="--malloc-ab: rounds of the three")
    ap.add_argument("--big-burst", type=int, metavar="N", help="send N photos of 4000x3999 at once instead; peak RSS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/load_test.json"), help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.attacks:
        res = run_attacks(args.run, args.chunked_mb)
        bad = not (res["all_as_expected"] and res["healthy_after"])
    elif args.big_burst:
        res = run_big_burst(args.run, args.big_burst)
        print(f"{res['photos']} x {res['size']} JPEG ({res['jpeg_bytes']:,d} bytes) at once: peak RSS {res['rss_mb_peak']:.0f} MB")
        bad = any(r["errors"] for r in res["rows"]) or not res["healthy_after"]
    elif args.malloc_ab:
        res = run_malloc_ab(args.run, args.rounds)
        print(json.dumps(res["median"], indent=1))
        bad = any(r["errors"] for r in res["rows"])
    else:
        res = run_load_test(args.run, args.requests, [int(c) for c in args.concurrency.split(",")], args.image, args.backend)
        print_soak(res)
        bad = sum(lv["errors"] for lv in res["levels"]) or not res["server_pid_unchanged"] or not res["healthy_after"]
    from fashionclf.core.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
