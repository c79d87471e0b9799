"""Helpers shared by test files (import as `from helpers import ...`; pyproject puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashionclf.review import db

# fp32 results of one function through different kernels (channels_last against NCHW, AVX2 against AVX-512, oneDNN
# against ATen) differ by rounding that grows with depth: about 5e-6 of the outputs' scale was seen for
# EfficientNet-Lite0's logits. A loading or wiring defect changes them by the order of the scale itself.
ACROSS_KERNELS_RTOL = 5e-5


def assert_close_across_kernels(got: torch.Tensor, want: torch.Tensor, rtol: float = ACROSS_KERNELS_RTOL) -> None:
    """Equal up to fp32 rounding of other kernels: every element within rtol of the largest magnitude compared."""
    scale = max(want.abs().max().item(), got.abs().max().item(), 1.0)
    diff = (got - want).abs().max().item()
    assert diff <= rtol * scale, f"max |difference| {diff:.3g} above {rtol:g} x scale {scale:.3g}"


def _open_after(barrier, opener, args, results) -> None:
    barrier.wait()
    try:
        opener(*args)
        results.put("ok")
    except Exception as e:  # reported to the test, which names it
        results.put(repr(e))


def open_at_once(opener, args: tuple, processes: int = 6) -> list[str]:
    """Call opener(*args) in several processes released together; each one's "ok" or its error."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the children touch SQLite only, never torch
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_open_after, args=(barrier, opener, args, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join()
    return out


def load_script(path: Path, name: str):
    """A script outside the package (benchmarks/, tools/) as a module, for tests that call its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_class_folder(root, per_class=12, classes=("pants", "shirt"), size=(40, 30), seed=0):
    """Class 0: a vertical dark bar; class 1: a horizontal dark bar; on light noisy backgrounds."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(220 + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
            if k == 0:
                img[5:35, 10:20] = 40
            else:
                img[15:25, 3:27] = 40
            Image.fromarray(img).save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def unlabelled_folder(root, n=16, seed=7, broken=1):
    """Photos of both classes (vertical and horizontal bars), flat, without class folders, and a broken file."""
    make_class_folder(root / "tmp", per_class=n // 2, seed=seed)
    root.mkdir(exist_ok=True)
    for i, p in enumerate(sorted((root / "tmp").rglob("*.*"))):
        p.rename(root / f"new{i:03d}{p.suffix}")
    for c in ("pants", "shirt"):
        (root / "tmp" / c).rmdir()
    (root / "tmp").rmdir()
    for i in range(broken):
        (root / f"broken{i}.jpg").write_bytes(b"not an image")
    return root


REVIEW_CLASSES = ["pants", "shirt", "skirt"]


def photo(kind: int, seed: int, size=(48, 40)) -> np.ndarray:
    """A light noisy 'product photo': kind 0 a dark vertical bar, 1 a horizontal bar, 2 a dark square."""
    rng = np.random.default_rng(seed)
    img = np.clip(225 + rng.normal(0, 10, (*size, 3)), 0, 255).astype(np.uint8)
    h, w = size
    if kind == 0:
        img[6 : h - 6, w // 2 - 5 : w // 2 + 5] = (50, 40, 90)
    elif kind == 1:
        img[h // 2 - 5 : h // 2 + 5, 4 : w - 4] = (90, 40, 40)
    else:
        img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (40, 90, 40)
    return img


def write_photos(folder: Path, kinds: list[int], seed0: int = 0, fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, k in enumerate(kinds):
        p = folder / f"k{k}_{seed0 + i:04d}.{fmt}"
        Image.fromarray(photo(k, seed0 + i)).save(p)
        out.append(p)
    return out


def class_folder(root: Path, per_class: int, seed0: int = 0) -> Path:
    for k, c in enumerate(REVIEW_CLASSES):
        write_photos(root / c, [k] * per_class, seed0 + 1000 * k)
    return root


def fake_catalogue(path: Path, folder: Path, n: int, seed0: int = 0, unknown: tuple[int, ...] = ()) -> list[Path]:
    """A catalogue of n real photos with made-up predictions: confidence rising with the index, every 3rd one automatic;
    the items whose ids are in `unknown` called "none of these" by the (made-up) run."""
    files = write_photos(folder, [i % 3 for i in range(n)], seed0)
    conn = db.connect(path, create=True)
    db.init(conn, REVIEW_CLASSES, "made-up")
    rows = []
    for i, f in enumerate(files):
        conf = 0.3 + 0.6 * i / max(1, n - 1)
        top = [{"label": REVIEW_CLASSES[(i + j) % 3], "confidence": p} for j, p in enumerate((conf, (1 - conf) * 0.7, (1 - conf) * 0.3))]
        rows.append({"file": str(f), "sha256": f"{seed0}-{i}", "label": top[0]["label"], "confidence": conf, "top_k": top,
                     "needs_review": i % 3 != 2, "unknown": i + 1 in unknown})  # fmt: skip
    db.add_predictions(conn, rows)
    conn.close()
    return files


@contextlib.contextmanager
def live_server(app):
    """The app under real uvicorn on a free loopback port; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def chromium():
    """A headless Chromium driven by Debian's chromedriver; skipped where it is not installed (never in CI)."""
    import os
    import shutil

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver must be installed in CI (.ci/run installs Debian's chromium chromium-driver)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    # No network beyond loopback here: background services would only produce refused connections.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations show there
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def one_error_shape(ctx, response, case):
    """Every 4xx/5xx body is JSON {"error": str}, one line, with an application/json content type."""
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"], body
    return None


def no_server_error(ctx, response, case):
    """A schemathesis check: no 5xx, whatever was sent."""
    assert response.status_code < 500, (response.status_code, response.content[:300])
    return None


def fuzz_call(case, sent: dict, excluded: list) -> None:
    """Send one generated case with the project's checks (no 5xx, the one error shape); count it by operation."""
    response = case.call_and_validate(additional_checks=[one_error_shape, no_server_error], excluded_checks=excluded)
    key = f"{case.operation.method.upper()} {case.operation.path}"  # the operation; case.method may be any verb
    sent[key] = sent.get(key, 0) + 1
    assert response.status_code < 500
