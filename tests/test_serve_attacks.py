"""The service under hostile input: body caps whatever the transfer encoding, pixel budgets from the headers,
a bounded queue, timeouts, the API key, one error shape, and a real server process's memory."""

import contextlib
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from conftest import assert_error as _error
from fastapi.testclient import TestClient  # noqa: E402
from helpers import live_server, load_script  # noqa: E402

from fashionclf.apps.serving import app as app_module  # noqa: E402
from fashionclf.apps.serving.app import create_app  # noqa: E402
from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.models import build_model  # noqa: E402
from fashionclf.training.recipes import resolve_config  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained mlp: what it answers does not matter here, only how the service behaves."""
    import torch

    cfg = resolve_config("mlp", None)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("attacks") / "run"
    save_run(out, build_model(cfg), cfg, {"calibration": {"temperature": 1.0, "threshold": 0.5}}, [], [f"c{i}" for i in range(10)], {})
    return load_run(out)


@pytest.fixture(scope="module")
def client(run):
    return TestClient(create_app(run=run))


def _png(w: int, h: int, color=(255, 255, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


SMALL = _png(28, 28, (40, 40, 40))


def _files(*blobs):
    return [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def test_routing_validation_and_malformed_bodies_get_the_one_error_shape(client):
    _error(client.get("/no/such/route"), 404, "no route")
    r = client.get("/v1/predict")
    _error(r, 405, "POST")
    assert r.headers["allow"] == "POST"
    _error(client.post("/v1/predict?top_k=abc", files=_files(SMALL)), 422, "top_k")
    _error(client.post("/v1/predict?top_k=0", files=_files(SMALL)), 422, "top_k")
    _error(client.post("/v1/predict?top_k=11", files=_files(SMALL)), 422, "top_k")
    _error(client.post("/v1/predict?preprocessed=maybe", files=_files(SMALL)), 422, "preprocessed")
    deep = b"[" * 200_000 + b"]" * 200_000  # deeper than any parser's stack
    for body, ctype in [
        (deep, "application/json"),
        (b'{"instances": [{"b64": "\xff\xfe"}]}', "application/json"),  # invalid UTF-8
        (b"\xc3\x28" * 100, "text/plain"),
        (b"--x\r\nContent-Disposition: form-data; name=file; filename=a\r\n\r\nabc", "multipart/form-data; boundary=x"),  # truncated
        (b"abc", "multipart/form-data"),  # no boundary
        (b"{}", "application/x-www-form-urlencoded"),
        (json.dumps({"instances": "AAAA"}).encode(), "application/json"),
        (json.dumps({"instances": [{"b64": 12}]}).encode(), "application/json"),
        (json.dumps({"instances": [{"b64": "é"}]}).encode(), "application/json"),
    ]:
        _error(client.post("/v1/predict", content=body, headers={"content-type": ctype}), 400)
    _error(client.post("/v1/predict", json={"instances": [{"b64": "AAAAAAAAAAAA"}]}), 415, "image 0")  # base64 of garbage
    assert client.get("/health").status_code == 200


def test_an_unexpected_exception_is_a_json_500_and_one_log_line(run, caplog):
    c = TestClient(create_app(run=run))

    def broken(*a, **k):
        raise RuntimeError("secret internals")

    c.app.state.predictor.predict = broken
    with caplog.at_level(logging.ERROR, logger="fashionclf.serve"):
        msg = _error(c.post("/v1/predict", files=_files(SMALL)), 500, "internal error")
    assert "secret" not in msg
    lines = [r.getMessage() for r in caplog.records if r.name == "fashionclf.serve"]
    assert len(lines) == 1 and "RuntimeError: secret internals" in lines[0] and "\n" not in lines[0]


def test_decompression_bombs_are_refused_from_the_header_before_decoding(run, monkeypatch):
    decoded = []
    real = app_module.load_rgb  # what decodes each photo in the service (Predictor.prepare)
    monkeypatch.setattr(app_module, "load_rgb", lambda *a, **k: decoded.append(1) or real(*a, **k))
    c = TestClient(create_app(run=run))
    bomb = _png(7000, 7000)
    assert len(bomb) < 400_000  # a few hundred KB that would decode to ~150 MB of RGB and ~500 MB in all
    _error(c.post("/v1/predict", files=_files(bomb)), 413, "7000x7000", "--max-pixels-per-image")
    _error(c.post("/v1/predict", files=_files(*[bomb] * 64)), 413, "image 0", "--max-pixels-per-image")
    # 64 images each under the per-image limit: the request's budget refuses them together
    nine_mp = _png(3000, 3000)
    _error(c.post("/v1/predict", files=_files(*[nine_mp] * 64)), 413, "--max-pixels-per-request")
    assert decoded == []
    # the keyword arguments set the same limits
    c2 = TestClient(create_app(run=run, max_pixels_per_image=500, max_pixels_per_request=1000))
    _error(c2.post("/v1/predict", files=_files(_png(30, 30))), 413, "above the limit of 500 per image")
    _error(c2.post("/v1/predict", files=_files(*[_png(20, 20)] * 3)), 413, "images 0-2", "1,000 per request")
    assert decoded == []
    assert c2.post("/v1/predict", files=_files(_png(20, 20), _png(20, 20))).status_code == 200
    assert len(decoded) == 2


def test_freed_memory_is_given_back_when_the_workers_fall_idle_after_photos(run, monkeypatch):
    from fashionclf.apps.serving import memory

    calls = []
    monkeypatch.setattr(memory, "trim_heap", lambda: calls.append(1) or True)
    c = TestClient(create_app(run=run))
    for _ in range(3):
        assert c.post("/v1/predict", files=_files(SMALL)).status_code == 200
    time.sleep(0.2)
    assert calls == []  # thumbnails: nothing worth a trim
    assert c.post("/v1/predict", files=_files(*[_png(1100, 1000, (200, 200, 200))] * 4)).status_code == 200  # 4 x 1.1 MP
    deadline = time.time() + 10
    while not calls and time.time() < deadline:
        time.sleep(0.01)
    assert calls == [1]  # once, when the workers fell idle (each decode was below the size trimmed at once)
    assert c.post("/v1/predict", files=_files(*[_png(1500, 1100, (200, 200, 200))] * 2)).status_code == 200  # 2 x 1.65 MP
    time.sleep(0.2)
    assert calls == [1, 1, 1]  # after each large decode, before the next could start beside it; nothing owed at idle
    c2 = TestClient(create_app(run=run, trim_memory=False))
    assert c2.post("/v1/predict", files=_files(_png(2100, 2000, (200, 200, 200)))).status_code == 200
    time.sleep(0.5)
    assert calls == [1, 1, 1]


def test_a_multipart_part_above_the_cap_is_413(run):
    c = TestClient(create_app(run=run, max_body_mb=1, max_buffered_mb=4))
    big = b"\0" * (1024 * 1024 + 1)
    _error(c.post("/v1/predict", files=_files(big)), 413, "--max-body-mb 1")

    def chunks():  # no Content-Length: the cap holds on the bytes as they come
        for _ in range(40):
            yield b"\0" * 65536

    _error(c.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}), 413, "--max-body-mb")
    _error(c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"}), 413, "above the limit")
    assert c.post("/v1/predict", files=_files(SMALL)).status_code == 200


def test_api_key(run):
    c = TestClient(create_app(run=run, api_key="s3cret-key"))
    assert c.get("/health").status_code == 200  # probes need no key
    for path in ("/v1/models", "/", "/openapi.json", "/no/such/route"):
        r = c.get(path)
        _error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
    _error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    _error(c.get("/v1/models", headers={"X-API-Key": "s3cret-key "[:-2]}), 401)
    _error(c.get("/v1/models", headers={"X-API-Key": "é".encode()}), 401)
    _error(c.post("/v1/predict", files=_files(SMALL)), 401)
    assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert c.get("/v1/models", headers={"authorization": "bearer s3cret-key"}).status_code == 200
    assert c.post("/v1/predict", files=_files(SMALL), headers={"X-API-Key": "s3cret-key"}).status_code == 200
    with pytest.raises(ValueError, match="empty"):
        create_app(run=run, api_key="  ")


def test_security_headers_and_no_third_party_docs(run, client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp and "sha256-" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    api = client.get("/v1/models")
    assert api.headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in api.headers["content-security-policy"]
    _error(client.get("/docs"), 404)  # off by default: FastAPI's page would load Swagger UI from a CDN
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert {"Prediction", "Predictions", "Error", "Health", "ModelInfo"} <= set(spec["components"]["schemas"])
    pytest.importorskip("swagger_ui_bundle")
    docs = TestClient(create_app(run=run, docs=True))
    html = docs.get("/docs")
    assert html.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in html.text
    assert "http://" not in html.text and "https://" not in html.text
    assert docs.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


@contextlib.contextmanager
def live(app):
    """The app under real uvicorn in this process, on a free loopback port (test_serve.live_server); yields the port."""
    with live_server(app) as url:
        yield int(url.rsplit(":", 1)[1])


def _blocking(app):
    """Make the app's predictor wait for the returned event: jobs stay in the pool as long as a test wants."""
    gate = threading.Event()
    real = app.state.predictor.predict

    def slow(*a, **k):
        gate.wait(30)
        return real(*a, **k)

    app.state.predictor.predict = slow
    return gate


def test_full_queue_answers_503_with_retry_after_and_slow_jobs_504(run):
    app = create_app(run=run, workers=1, queue=1, timeout_s=20)
    release = _blocking(app)
    with live(app) as port:
        url = f"http://127.0.0.1:{port}/v1/predict"
        results = {}

        def send(i):
            results[i] = httpx.post(url, files=_files(SMALL), timeout=30)

        first = [threading.Thread(target=send, args=(i,)) for i in range(2)]  # one running, one queued
        for t in first:
            t.start()
        deadline = time.time() + 10
        while app.state.gate.jobs < 2 and time.time() < deadline:
            time.sleep(0.01)
        r = httpx.post(url, files=_files(SMALL), timeout=30)
        _error(r, 503, "--queue 1", "retry")
        assert r.headers["retry-after"] == "1"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200  # the event loop is free
        release.set()
        for t in first:
            t.join()
        assert [results[i].status_code for i in range(2)] == [200, 200]
        assert app.state.gate.jobs == 0 and app.state.gate.buffered == 0

    app = create_app(run=run, workers=1, queue=0, timeout_s=0.5)
    release = _blocking(app)
    with live(app) as port:
        t0 = time.perf_counter()
        _error(httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=_files(SMALL), timeout=30), 504, "--timeout-s")
        assert time.perf_counter() - t0 < 10
        # a body that never comes: 408 at the deadline, and the connection's slot is given back
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            s.settimeout(10)
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head
        release.set()


def test_bodies_held_in_memory_are_bounded_across_requests(run):
    app = create_app(run=run, max_body_mb=1, max_buffered_mb=1.5)
    with live(app) as port:
        with socket.create_connection(("127.0.0.1", port)) as slow:
            # an upload of 1 MB that stops at 0.9 MB: its bytes are held while it waits for the rest
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
            slow.sendall(b" " * 900_000)
            deadline = time.time() + 10
            while app.state.gate.buffered < 850_000 and time.time() < deadline:
                time.sleep(0.01)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=b" " * 900_000, headers={"content-type": "application/json"})
            _error(r, 503, "--max-buffered-mb")
            assert r.headers["retry-after"] == "1"
        deadline = time.time() + 10
        while app.state.gate.buffered and time.time() < deadline:  # the dropped upload gives its bytes back
            time.sleep(0.01)
        assert app.state.gate.buffered == 0
        assert httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=_files(SMALL)).status_code == 200


def test_binding_beyond_loopback_without_a_key_warns(run, monkeypatch, capsys, tmp_path):
    import uvicorn

    from fashionclf.apps.cli import main
    from fashionclf.apps.serving.guard import startup_warnings

    assert startup_warnings("127.0.0.1", None) == [] and startup_warnings("::1", None) == [] and startup_warnings("localhost", None) == []
    assert startup_warnings("0.0.0.0", "k") == []
    assert "without an API key" in startup_warnings("0.0.0.0", None)[0]
    assert startup_warnings("myhost.example", None)  # a name may resolve to anything
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))  # nothing is bound
    monkeypatch.delenv("FASHIONCLF_API_KEY", raising=False)
    assert main(["serve", str(run.path), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 without an API key" in err
    key = tmp_path / "key"
    key.write_text("from-a-file\n")
    assert main(["serve", str(run.path), "--host", "0.0.0.0", "--api-key-file", str(key), "--max-files", "3"]) == 0
    assert "warning" not in capsys.readouterr().err
    app = started[-1][0]
    assert app.state.limits.max_files == 3
    assert TestClient(app).get("/v1/models", headers={"X-API-Key": "from-a-file"}).status_code == 200
    monkeypatch.setenv("FASHIONCLF_API_KEY", "from-env")
    assert main(["serve", str(run.path), "--host", "0.0.0.0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert TestClient(started[-1][0]).get("/v1/models", headers={"X-API-Key": "from-env"}).status_code == 200
    assert main(["serve", str(run.path), "--api-key", "a", "--api-key-file", str(key)]) == 2
    assert "not both" in capsys.readouterr().err
    key.write_text("\n")
    assert main(["serve", str(run.path), "--api-key-file", str(key)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["serve", str(run.path), "--queue", "-1"]) == 2
    assert "--queue -1" in capsys.readouterr().err


def _load_test():
    return load_script(SCRIPT, "load_test")


@pytest.mark.slow
def test_real_server_process_stays_bounded_under_attack(run):
    """`fashionclf serve` as its own process, default limits: chunked uploads past the cap, 64 bombs, huge headers."""
    lt = _load_test()
    port = lt.free_port()
    proc = lt.start_server(str(run.path), port)
    try:
        lt.load(port, *lt.multipart(SMALL), 20, 1)
        with lt.RssSampler(proc.pid) as s:
            t0 = time.perf_counter()
            res = lt.chunked_upload(port, 120)
            took = time.perf_counter() - t0
        assert res["status"] == 413 and "--max-body-mb 20" in res["body"], res
        assert res["sent_mb_before_cut"] < 40 and took < 30, res  # cut near 20 MB, not read to the end
        assert s.peak - s.start < 150, (s.start, s.peak)  # at most the 20 MB cap and its copies, never the 120 MB
        # the same through a real client library that only reads the answer after sending everything
        gen = (b"\0" * 65536 for _ in range(800))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=gen, headers={"content-type": "application/json"}, timeout=60)
        _error(r, 413, "--max-body-mb")
        bomb = _png(7000, 7000)
        with lt.RssSampler(proc.pid) as s:
            status, answer, took = lt.post(port, *lt.multipart([bomb] * 64))
        assert status == 413 and "--max-pixels-per-image" in answer["error"], answer
        assert s.peak - s.start < 150 and took < 30, (s.start, s.peak, took)
        for size in (100_000, 2_000_000):  # huge headers: taken or refused (h11 bounds incomplete ones), never a 500
            with socket.create_connection(("127.0.0.1", port)) as sock:
                with contextlib.suppress(OSError):  # refused mid-send: the answer is still read below
                    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\nContent-Length: 0\r\n\r\n")
                sock.settimeout(10)
                head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 400 "), head  # the app's "empty request", or uvicorn's own refusal
        assert lt.health(port) and proc.poll() is None
    finally:
        lt.stop_server(proc)


def test_decodes_share_one_memory_budget_waiting_for_room(run, monkeypatch):
    """Images whose decoding would pass --max-decode-mb together wait for each other; one that alone needs more is
    413 before anything is decoded; one that finds no room within --timeout-s is 503."""
    from fashionclf.apps.serving.limits import MB, Gate, Limits, RequestError

    gate = Gate(Limits(max_decode_mb=10, timeout_s=5))
    held, most, lock = [0], [0], threading.Lock()

    def decode(cost):
        with gate.decoding(cost, 0):
            with lock:
                held[0] += cost
                most[0] = max(most[0], held[0])
            time.sleep(0.05)
            with lock:
                held[0] -= cost

    threads = [threading.Thread(target=decode, args=(6 * MB,)) for _ in range(4)] + [threading.Thread(target=decode, args=(MB,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 6 * MB <= most[0] <= 10 * MB and gate.decode_bytes == 0
    with pytest.raises(RequestError) as e, gate.decoding(11 * MB, 3):
        pass
    assert e.value.status == 413 and "image 3" in e.value.message and "--max-decode-mb 10" in e.value.message
    quick = Gate(Limits(max_decode_mb=10, timeout_s=0.2))
    with quick.decoding(8 * MB, 0), pytest.raises(RequestError) as e, quick.decoding(8 * MB, 1):
        pass
    assert e.value.status == 503 and e.value.headers["Retry-After"] and quick.decode_bytes == 0
    # through the app: a 1000x1000 PNG (about 10.5 MB to decode) against a 5 MB budget, nothing else changed
    r = TestClient(create_app(run=run, max_decode_mb=5)).post("/v1/predict", files=_files(_png(1000, 1000)))
    _error(r, 413, "--max-decode-mb 5")
    # refused from the headers before any image of the request is decoded, as the pixel limits are
    decoded = []
    real = app_module.load_rgb
    monkeypatch.setattr(app_module, "load_rgb", lambda *a: decoded.append(1) or real(*a))
    r = TestClient(create_app(run=run, max_decode_mb=5)).post("/v1/predict", files=_files(_png(20, 20), _png(1000, 1000)))
    _error(r, 413, "image 1", "--max-decode-mb 5")
    assert decoded == []


@pytest.mark.slow
def test_sixteen_photos_at_the_pixel_limit_stay_under_the_stated_memory_ceiling(run):
    """`fashionclf serve` as its own process states its memory ceiling at start; 16 concurrent 4000x3999 photos
    (decoded at full size: a PNG) all get answers and its resident memory never passes that ceiling. The body
    limits are set low (the photos are small files), so the ceiling leaves room for one decode only."""
    lt = _load_test()
    port = lt.free_port()
    proc = lt.start_server(str(run.path), port, args=["--max-body-mb", "1", "--max-buffered-mb", "4"])
    try:
        line = next(line for line in proc.stderr if line.startswith("memory:"))
        ceiling = float(line.split("at most about ")[1].split()[0])
        y, x = np.mgrid[0:3999, 0:4000]
        img = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        body = lt.multipart(buf.getvalue(), "big.png")
        with lt.RssSampler(proc.pid) as s:
            res = lt.load(port, *body, 16, 16)
        assert res["statuses"] == {"200": 16}, res
        assert s.peak <= ceiling, (s.start, s.peak, ceiling)
        assert lt.health(port) and proc.poll() is None
    finally:
        lt.stop_server(proc)


def test_limits_reject_nonsense():
    from fashionclf.apps.serving.limits import Limits

    nonsense = [{"workers": 0}, {"queue": -1}, {"max_body_mb": 0}, {"timeout_s": float("nan")}, {"max_body_mb": float("inf")}]
    for bad in [*nonsense, {"max_files": 2.5}, {"workers": True}]:
        with pytest.raises(ValueError, match="--"):
            Limits(**bad)
    with pytest.raises(ValueError, match="--max-buffered-mb"):
        Limits(max_body_mb=50, max_buffered_mb=20)
    assert np.isclose(Limits(max_body_mb=0.5).max_body_bytes, 524288)
