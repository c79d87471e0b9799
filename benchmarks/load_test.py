"""Load test of `fashionclf serve`: single-image requests over loopback at several concurrencies.

Starts the real server as its own process (so its resident memory can be read from /proc), sends
`--requests` POSTs per concurrency level from that many client threads (one keep-alive connection each),
and reports p50/p99 latency, requests/s, errors, whether the server process is still the same one
(0 restarts) and its RSS before and after. Exits non-zero on any error.

    .venv/bin/python benchmarks/load_test.py RUN [--requests 5000] [--concurrency 1,32] [--image FILE] [--backend torch] \
        [--out benchmarks/results/load_test.json]
    # CI runs a short version: --requests 300 --concurrency 16 (tests/test_load.py)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
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


def multipart(image: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(run: str, port: int, backend: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fashionclf", "serve", run, "--port", str(port), "--backend", backend]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


def load(port: int, body: bytes, ctype: str, requests: int, concurrency: int) -> dict:
    """requests POSTs spread over concurrency threads; latencies in ms, errors as (status or exception) strings."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and json.loads(data)["predictions"]
                err = None if ok else f"HTTP {r.status}: {data[:200]!r}"
            except Exception as e:  # a dropped connection counts as an error, and the next request reconnects
                err = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(dt)
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
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "requests_per_s": len(lat) / wall,
        "wall_s": wall,
    }


def default_image() -> tuple[bytes, str]:
    """A Fashion-MNIST test image as a product thumbnail: dark item on white, PNG (the test set, not a photo)."""
    import io

    from PIL import Image

    from fashionclf.data.fashion_mnist import load_fashion_mnist

    d = load_fashion_mnist(allow_download=False)
    img = 255 - d.test_x[0].numpy()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), "fmnist-test-0.png"


def run_load_test(run: str, requests: int, concurrency: list[int], image: str | None, backend: str, warmup: int = 50) -> dict:
    body_img, name = (Path(image).read_bytes(), Path(image).name) if image else default_image()
    body, ctype = multipart(body_img, name)
    port = free_port()
    proc = start_server(run, port, backend)
    try:
        load(port, body, ctype, warmup, 1)  # first requests pay for lazy imports and allocator growth
        before = rss_mb(proc.pid)
        levels = []
        for c in concurrency:
            levels.append({**load(port, body, ctype, requests, c), "rss_mb_after": rss_mb(proc.pid)})
        alive = proc.poll() is None
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        healthy = c.getresponse().status == 200
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "run": run,
            "backend": backend,
            "image": name,
            "image_bytes": len(body_img),
            "server_pid_unchanged": alive,
            "healthy_after": healthy,
            "rss_mb_after_warmup": before,
            "levels": levels,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "study/runs/tuned_cnn-s0"))
    ap.add_argument("--requests", type=int, default=5000, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated client thread counts")
    ap.add_argument("--image", help="image file to send (default: Fashion-MNIST test image 0 as a PNG thumbnail)")
    ap.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/load_test.json"), help="write the JSON result here")
    args = ap.parse_args(argv)
    res = run_load_test(args.run, args.requests, [int(c) for c in args.concurrency.split(",")], args.image, args.backend)
    print(
        f"{res['backend']} backend, {res['image']} ({res['image_bytes']:,d} bytes); RSS after warm-up {res['rss_mb_after_warmup']:.0f} MB"
    )
    print("| concurrency | requests | errors | p50 ms | p99 ms | req/s | RSS after (MB) |\n|---|---|---|---|---|---|---|")
    for lv in res["levels"]:
        print(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | "
            f"{lv['requests_per_s']:.0f} | {lv['rss_mb_after']:.0f} |"
        )
    print(f"server process unchanged: {res['server_pid_unchanged']}, healthy after: {res['healthy_after']}")
    from fashionclf.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    bad = sum(lv["errors"] for lv in res["levels"]) or not res["server_pid_unchanged"] or not res["healthy_after"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
