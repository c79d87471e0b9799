"""The HTTP service: every endpoint, every bad input of the deploy issue, unusual but valid images."""

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import chromium, live_server

from fashionclf.apps.serving.app import Limits, create_app  # noqa: E402
from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.training.loop import fit  # noqa: E402
from fashionclf.training.recipes import resolve_config  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A small mlp trained on synthetic data (bars at class-specific heights), served in-process."""
    import torch

    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(40)
    x = torch.randint(0, 30, (len(y), 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):
        x[y == c, 2 + 2 * c : 5 + 2 * c, 6:22] = 255
    cfg = resolve_config("mlp", None, epochs=3, val_size=0, precision="fp32")
    res = fit(cfg, x, y, x[:100], y[:100])
    out = tmp_path_factory.mktemp("svc") / "run"
    save_run(
        out,
        res.model,
        cfg,
        {"test_accuracy": 1.0, "calibration": {"temperature": 1.0, "threshold": 0.9, "target_precision": 0.99}},
        res.history,
        [f"c{i}" for i in range(10)],
        {},
    )
    return TestClient(create_app(run=load_run(out)))


def _photo():
    img = np.full((160, 120, 3), 240, np.uint8)
    img[30:130, 40:80] = (60, 40, 30)
    return img


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


JPEG = _bytes(Image.fromarray(_photo()), "JPEG", quality=95)


def _ok(client, files):
    r = client.post("/v1/predict", files=[("file", (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate(files)])
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_health_models_and_page(client):
    assert client.get("/health").json()["status"] == "ok"
    m = client.get("/v1/models").json()
    assert m["name"] == "mlp" and len(m["classes"]) == 10 and m["calibration"]["threshold"] == 0.9
    page = client.get("/")
    assert page.status_code == 200 and "<input" in page.text and "/v1/predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


def test_multipart_and_kserve_json_agree_in_input_order(client):
    other = _photo()
    other[30:130, 40:80] = 250  # a blank item: another prediction, so the order is visible
    second = _bytes(Image.fromarray(other), "PNG")
    a = _ok(client, [JPEG, second])
    assert len(a) == 2 and set(a[0]) == {"label", "index", "confidence", "top_k", "needs_review", "unknown", "unknown_score", "audit"}
    assert a[0]["unknown"] is False and a[0]["unknown_score"] is None  # a run saved without the score (issue 17 item 2)
    r = client.post("/v1/predict", json={"instances": [{"b64": base64.b64encode(b).decode()} for b in (JPEG, second)]})
    assert r.status_code == 200
    assert [p["label"] for p in r.json()["predictions"]] == [p["label"] for p in a]
    with_pre = client.post("/v1/predict?preprocessed=true", files=[("file", ("a.jpg", JPEG, "image/jpeg"))]).json()["predictions"][0]
    seen = Image.open(io.BytesIO(base64.b64decode(with_pre["preprocessed_png_b64"])))
    assert seen.size == (28, 28)


@pytest.mark.parametrize(
    "make,status,message",
    [
        (lambda: {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty request"),
        (lambda: {"files": [("file", ("a.jpg", b"", "image/jpeg"))]}, 400, "empty"),
        (lambda: {"files": [("file", ("a.jpg", b"just some text, named .jpg", "image/jpeg"))]}, 415, "not an image"),
        (lambda: {"files": [("file", ("a.jpg", JPEG[: len(JPEG) // 2], "image/jpeg"))]}, 422, "truncated or damaged"),
        (lambda: {"files": [("file", ("a.jpg", b"\0" * (50 * 1024 * 1024), "image/jpeg"))]}, 413, "above the limit"),
        (lambda: {"json": {"instances": [{"b64": "%%%not base64"}]}}, 400, "malformed base64"),
        (lambda: {"files": [("photo", ("a.jpg", JPEG, "image/jpeg"))]}, 400, "expected one or more 'file' fields"),
        (lambda: {"files": [("file", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(1000)]}, 413, "at most"),
        (lambda: {"json": {"wrong": 1}}, 400, "instances"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_the_server_stays_healthy(client, make, status, message):
    r = client.post("/v1/predict", **make())
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/health").status_code == 200
    assert _ok(client, [JPEG])[0]["label"]


def test_huge_png_is_refused_before_decoding(client):
    # 20,000 x 20,000 pixels, but a small file: one colour compresses to almost nothing
    im = Image.new("1", (20000, 20000))
    r = client.post("/v1/predict", files=[("file", ("big.png", _bytes(im, "PNG"), "image/png"))])
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_unusual_valid_images_get_the_plain_rgb_label(client):
    plain = _ok(client, [_bytes(Image.fromarray(_photo()), "PNG")])[0]["label"]
    rgb = Image.fromarray(_photo())
    frames = [rgb.convert("P"), Image.new("P", rgb.size, 3)]
    gif = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    cmyk = _bytes(rgb.convert("CMYK"), "JPEG", quality=95)
    a16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    png16 = _bytes(Image.fromarray(a16), "PNG")
    rgba = rgb.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, :, 3] = 255
    alpha[:10, :10, 3] = 0  # a transparent corner over a white background
    rgba_png = _bytes(Image.fromarray(alpha, "RGBA"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90 degrees: displayed upright after EXIF transpose
    rotated = _bytes(rgb.rotate(-90, expand=True), "JPEG", exif=exif.tobytes(), quality=95)
    labels = [p["label"] for p in _ok(client, [gif, cmyk, png16, rgba_png, rotated])]
    assert labels == [plain] * 5, labels

    # stronger than the label of a small model: the model sees nearly the same 28x28 image for each
    def seen(blob):
        r = client.post("/v1/predict?preprocessed=true", files=[("file", ("x", blob, "application/octet-stream"))])
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["predictions"][0]["preprocessed_png_b64"]))), dtype=float)

    ref = seen(_bytes(Image.fromarray(_photo()), "PNG"))
    assert ref.max() > 100  # the dark item became a light one on black
    for name, blob in {"gif": gif, "cmyk": cmyk, "png16": png16, "rgba": rgba_png, "exif": rotated}.items():
        assert np.abs(seen(blob) - ref).mean() < 12, name


def test_more_files_than_the_limit_in_json(client):
    r = client.post(
        "/v1/predict",
        content=json.dumps({"instances": [{"b64": "AA=="}] * (Limits().max_files + 1)}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_real_uvicorn_server_over_http(client):
    """The same app under uvicorn on a free loopback port, called over real HTTP."""
    import urllib.request

    with live_server(client.app) as base:
        assert json.loads(urllib.request.urlopen(f"{base}/health", timeout=10).read())["status"] == "ok"
        body = json.dumps({"instances": [{"b64": base64.b64encode(JPEG).decode()}]}).encode()
        req = urllib.request.Request(f"{base}/v1/predict", data=body, headers={"content-type": "application/json"})
        preds = json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]
        assert len(preds) == 1 and preds[0]["label"].startswith("c")


def _csp_violations(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


@pytest.mark.browser
@pytest.mark.slow
def test_web_page_in_headless_chromium(client, tmp_path):
    """Choose a photo on the page: it shows the photo, the 28x28 image the model saw, top-3 bars and the review flag."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "item.jpg"
    photo.write_bytes(JPEG)
    expected = _ok(client, [JPEG])[0]
    with live_server(client.app) as base:
        browser = chromium()
        try:
            browser.get(base + "/")
            assert "fashionclf" in browser.title
            browser.find_element(By.ID, "pick").send_keys(str(photo))
            label = WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "label").get_attribute("data-label"))
            assert label == expected["label"]
            assert browser.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png;base64,")
            assert browser.find_element(By.ID, "photo").get_attribute("src").startswith("blob:")
            assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 3
            review = browser.find_element(By.ID, "review").text
            assert review == ("A person should check this one." if expected["needs_review"] else "Confident enough to label automatically.")
            # a refused upload shows the server's message, and the page keeps working
            bad = tmp_path / "notes.jpg"
            bad.write_text("not an image")
            browser.find_element(By.ID, "pick").send_keys(str(bad))
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "label").get_attribute("class") == "err")
            assert "image 0" in browser.find_element(By.ID, "label").text
            assert _csp_violations(browser) == []  # the page runs under its own strict policy
        finally:
            browser.quit()


HOSTILE = [f'<img src=x onerror="window.pwned={i}">' for i in range(9)] + ["</div><script>window.pwned=9</script>"]


@pytest.mark.browser
@pytest.mark.slow
def test_class_and_model_names_are_shown_as_text_in_headless_chromium(tmp_path):
    """A run whose class names (and model name) are markup: the page shows them as text and runs none of it."""
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fashionclf.models import build_model

    cfg = resolve_config("mlp", None)
    torch.manual_seed(0)
    out = save_run(tmp_path / "run", build_model(cfg), cfg, {"calibration": {"temperature": 1.0, "threshold": 0.5}}, [], HOSTILE, {})
    run = load_run(out)
    run.meta["model"] = "<script>window.pwned='model'</script>"
    app = create_app(run=run)
    photo = tmp_path / "item.jpg"
    photo.write_bytes(JPEG)
    expected = _ok(TestClient(app), [JPEG])[0]
    with live_server(app) as base:
        browser = chromium()
        try:
            browser.get(base + "/")
            assert "<script>window.pwned='model'</script>" in browser.find_element(By.TAG_NAME, "code").text
            browser.find_element(By.ID, "pick").send_keys(str(photo))
            label = WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "label").get_attribute("data-label"))
            assert label == expected["label"] in HOSTILE
            assert browser.find_element(By.ID, "label").text.startswith(expected["label"] + " (")
            names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars > div > div:first-child")]
            assert [n.rsplit(" ", 1)[0] for n in names] == [t["label"] for t in expected["top_k"]]
            assert browser.find_elements(By.CSS_SELECTOR, "#bars img, #label img, #bars script") == []
            assert len(browser.find_elements(By.TAG_NAME, "img")) == 2  # the photo and what the model saw, nothing else
            time.sleep(0.5)  # an injected onerror would have fired by now
            assert browser.execute_script("return window.pwned === undefined")
            assert _csp_violations(browser) == []
        finally:
            browser.quit()


def test_onnx_backend_answers_like_torch(client):
    pytest.importorskip("onnxruntime")
    onnx_client = TestClient(create_app(run=client.app.state.run, backend="onnx"))
    assert onnx_client.get("/health").json()["backend"] == "onnx"
    photos = [JPEG, _bytes(Image.fromarray(_photo()[:, ::-1]), "PNG"), _bytes(Image.fromarray(255 - _photo()), "PNG")]
    a, b = _ok(client, photos), _ok(onnx_client, photos)
    assert [p["label"] for p in a] == [p["label"] for p in b]
    assert max(abs(p["confidence"] - q["confidence"]) for p, q in zip(a, b)) < 1e-3
    assert [p["needs_review"] for p in a] == [p["needs_review"] for p in b]
