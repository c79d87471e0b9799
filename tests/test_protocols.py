"""The ecosystem's protocols against a real server (uvicorn on a free loopback port) with real clients:
tritonclient.http for the Open Inference Protocol (V2), the kserve SDK's REST client for V1 and V2, and
/metrics scraped and read with prometheus_client's own parser."""

import asyncio
import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from conftest import assert_error as _error  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import live_server  # noqa: E402

from fashionclf.apps.serving.app import Predictor, create_app  # noqa: E402
from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.models import build_model  # noqa: E402
from fashionclf.training.recipes import resolve_config  # noqa: E402

OUTPUTS = ["probabilities", "label", "confidence", "needs_review", "unknown"]


def _png(w: int, h: int, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


DARK, LIGHT = _png(28, 28, (40, 40, 40)), _png(28, 28, (200, 200, 200))
IMAGES = [DARK, LIGHT]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained mlp whose review threshold lies between the two images' confidences: one flagged, one not."""
    import torch

    cfg = resolve_config("mlp", None)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("protocols") / "run"
    save_run(out, build_model(cfg), cfg, {"calibration": {"temperature": 1.0, "threshold": 0.5}}, [], [f"c{i}" for i in range(10)], {})
    run = load_run(out)
    conf = sorted(r["confidence"] for r in Predictor(run).predict(IMAGES))
    assert conf[0] < conf[1], conf
    run.metrics["calibration"]["threshold"] = (conf[0] + conf[1]) / 2
    return run


@pytest.fixture(scope="module")
def base(run):
    with live_server(create_app(run=run)) as url:
        yield url


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def _v1(base, blobs=IMAGES, path="/v1/predict") -> list[dict]:
    r = httpx.post(f"{base}{path}", json={"instances": [{"b64": _b64(b)} for b in blobs]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_kserve_v1_paths_answer_as_v1_predict(base):
    assert httpx.get(f"{base}/v1/models/mlp").json() == {"name": "mlp", "ready": True}
    _error(httpx.get(f"{base}/v1/models/nope"), 404, "no model 'nope'", "'mlp'")
    assert _v1(base, path="/v1/models/mlp:predict") == _v1(base)
    _error(httpx.post(f"{base}/v1/models/nope:predict", json={"instances": [{"b64": _b64(DARK)}]}), 404, "no model")
    r = httpx.post(f"{base}/v1/models/mlp:predict?top_k=1&preprocessed=true", files=[("file", ("a.png", DARK, "image/png"))])
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 1
    assert "preprocessed_png_b64" in r.json()["predictions"][0]
    _error(httpx.post(f"{base}/v1/models/mlp:predict?top_k=0", json={"instances": [{"b64": _b64(DARK)}]}), 422, "top_k")


def test_tritonclient_health_and_metadata(base):
    tritonclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(url=base.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and not client.is_model_ready("nope")
        meta = client.get_server_metadata()
        assert meta["name"] == "fashionclf" and "binary_tensor_data" in meta["extensions"]
        model = client.get_model_metadata("mlp")
        assert model["name"] == "mlp" and model["platform"] == "pytorch"
        assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
            ("probabilities", "FP32", [-1, 10]),
            ("label", "BYTES", [-1]),
            ("confidence", "FP32", [-1]),
            ("needs_review", "BOOL", [-1]),
            ("unknown", "BOOL", [-1]),
        ]
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("nope")
        assert e.value.status() == "404" and "no model 'nope'" in e.value.message()
    finally:
        client.close()


def _check(result, expected: list[dict]) -> None:
    """Every output of a tritonclient InferResult against /v1/predict's answer for the same images."""
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").tolist()]
    assert labels == [p["label"] for p in expected]
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(expected), 10)
    assert probs.argmax(1).tolist() == [p["index"] for p in expected]
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("confidence"), [p["confidence"] for p in expected], rtol=1e-6)
    review = result.as_numpy("needs_review")
    assert review.dtype == np.bool_ and review.tolist() == [p["needs_review"] for p in expected]
    assert result.as_numpy("unknown").tolist() == [p["unknown"] for p in expected]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_gives_the_labels_of_v1_predict(base, binary):
    tritonclient = pytest.importorskip("tritonclient.http")

    expected = _v1(base)
    assert sorted(p["needs_review"] for p in expected) == [False, True]  # both values travel
    client = tritonclient.InferenceServerClient(url=base.removeprefix("http://"))
    try:
        inp = tritonclient.InferInput("image", [len(IMAGES)], "BYTES")
        # binary: the files as they are (binary tensor extension); JSON strings must be UTF-8: base64 text
        data = IMAGES if binary else [_b64(b).encode() for b in IMAGES]
        inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        _check(client.infer("mlp", [inp]), expected)  # no outputs named: all five, binary (tritonclient asks so)
        wanted = [tritonclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
        result = client.infer("mlp", [inp], outputs=wanted, request_id="req-1")
        _check(result, expected)
        assert result.get_response()["id"] == "req-1"
        assert [o["name"] for o in result.get_response()["outputs"]] == OUTPUTS
        one = client.infer("mlp", [inp], outputs=[tritonclient.InferRequestedOutput("label", binary_data=not binary)])
        assert [o["name"] for o in one.get_response()["outputs"]] == ["label"] and one.as_numpy("confidence") is None
        ranked = client.infer("mlp", [inp], outputs=[tritonclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)])
        top = [x.decode() if isinstance(x, bytes) else x for x in ranked.as_numpy("probabilities")[:, 0].tolist()]
        assert [t.split(":")[2] for t in top] == [p["label"] for p in expected]
    finally:
        client.close()


def test_tritonclient_errors_are_the_servers_messages(base):
    tritonclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(url=base.removeprefix("http://"))
    try:
        inp = tritonclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [inp])
        assert e.value.status() == "415" and "image 0" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.infer("nope", [inp])
        assert e.value.status() == "404"
    finally:
        client.close()


def _infer(base, body, headers=None, name="mlp"):
    return httpx.post(f"{base}/v2/models/{name}/infer", content=body, headers=headers or {"content-type": "application/json"}, timeout=30)


def _request(data, shape=None, **tensor) -> bytes:
    t = {"name": "image", "shape": shape or [len(data)], "datatype": "BYTES", "data": data, **tensor}
    return json.dumps({"inputs": [t]}).encode()


def _binary(blobs, shape=None, size=None) -> tuple[bytes, dict]:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
    t = {
        "name": "image",
        "shape": shape or [len(blobs)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw) if size is None else size},
    }
    head = json.dumps({"inputs": [t]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"}


def test_v2_infer_refuses_hostile_requests_with_a_clear_4xx(base):
    ok = _infer(base, _request([[_b64(DARK)], [_b64(LIGHT)]], shape=[2, 1]))  # nested data, row-major
    assert ok.status_code == 200, ok.text
    raw = ok.json()["outputs"][1]
    assert raw["name"] == "label" and raw["shape"] == [2] and raw["data"] == [p["label"] for p in _v1(base)]
    body, headers = _binary(IMAGES)
    assert _infer(base, body, headers).status_code == 200
    for shape in ([1, 2], [2, 2], [1, 1, 3]):  # only [n] or [n, 1, ...]: what the schema declares
        r = _infer(base, _request([_b64(DARK)] * math.prod(shape), shape=shape))
        assert r.status_code == 400 and "[n] images" in r.json()["error"], (shape, r.text)
    bomb = _png(7000, 7000, (255, 255, 255))
    cases = [
        (b"", None, 400, "empty request"),
        (b"{", None, 400, "Invalid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, None, 400, "recursion"),
        (json.dumps({"inputs": []}).encode(), None, 400, "inputs"),
        (_request([_b64(DARK)], datatype="FP32"), None, 400, "BYTES"),
        (_request([_b64(DARK)], name="pixels"), None, 400, "'image'"),
        (_request([_b64(DARK)], shape=[-1]), None, 400, "shape"),
        (_request([_b64(DARK)], shape=[2]), None, 400, "1 elements; the shape says 2"),
        (_request([_b64(DARK)], shape=[10**9, 10**9]), None, 413, "--max-files"),
        (_request([_b64(DARK)] * 65), None, 413, "--max-files"),
        (_request([3]), None, 400, "data"),
        (_request(["AAAAAAAA"]), None, 415, "image 0"),
        (_request([""]), None, 400, "image 0"),
        (_request(["\ud800"]), None, 400, "Invalid JSON"),  # a lone surrogate: JSON no parser should take
        (_request([_b64(bomb)]), None, 413, "--max-pixels-per-image"),
        (_request([_b64(DARK)] * 64), None, 200, ""),
        (
            json.dumps({"inputs": [json.loads(_request([_b64(DARK)]))["inputs"][0]], "outputs": [{"name": "logits"}]}).encode(),
            None,
            400,
            "outputs",
        ),
        (
            json.dumps({"inputs": json.loads(_request([_b64(DARK)]))["inputs"], "outputs": [{"name": "label"}] * 2}).encode(),
            None,
            400,
            "at most once",
        ),
        (*_binary(IMAGES, size=5), 400, "binary_data_size 5"),
        (*_binary(IMAGES, shape=[3]), 400, "the shape says 3"),
        (*_binary(IMAGES, shape=[1]), 400, "more than the 1"),
        (_binary(IMAGES)[0][:-3], _binary(IMAGES)[1], 400, "binary_data_size"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "beyond the body"),
        (b"{}", {"Inference-Header-Content-Length": "-1"}, 422, "inference-header-content-length"),
        (b"{}", {"Inference-Header-Content-Length": "x"}, 422, "inference-header-content-length"),
        (_request([_b64(DARK)]), {"Content-Encoding": "gzip"}, 415, "Content-Encoding"),
    ]
    for body, headers, status, words in cases:
        r = _infer(base, body, headers)
        if status == 200:
            assert r.status_code == 200, r.text
        else:
            _error(r, status, words)
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}).encode()
    trunc = head + (1000).to_bytes(4, "little")
    _error(_infer(base, trunc, {"Inference-Header-Content-Length": str(len(head))}), 400, "runs past")
    _error(_infer(base, _request([_b64(DARK)]), name="nope"), 404, "no model 'nope'")
    _error(httpx.get(f"{base}/v2/models/nope"), 404)
    _error(httpx.get(f"{base}/v2/models/nope/ready"), 404)
    _error(httpx.get(f"{base}/v2/models/mlp/infer"), 405)
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_v2_routes_go_through_the_same_limits(run):
    app = create_app(run=run, max_body_mb=0.01, max_files=2, max_pixels_per_request=1000)
    c = TestClient(app)
    _error(c.post("/v2/models/mlp/infer", content=_request(["A" * 20_000])), 413, "--max-body-mb")
    _error(c.post("/v2/models/mlp/infer", content=_request([_b64(DARK)] * 3)), 413, "at most 2")
    _error(c.post("/v2/models/mlp/infer", content=_request([_b64(DARK)] * 2)), 413, "--max-pixels-per-request")

    def chunks():  # no Content-Length: the cap holds on the bytes as they come
        yield _request([_b64(DARK)])[:-2]
        for _ in range(20):
            yield b" " * 1000

    _error(c.post("/v2/models/mlp/infer", content=chunks()), 413, "above the limit")
    _error(c.post("/v1/models/mlp:predict", json={"instances": [{"b64": _b64(DARK)}] * 3}), 413, "--max-files")
    keyed = TestClient(create_app(run=run, api_key="k3y"))
    for path in ("/v2", "/v2/models/mlp", "/v1/models/mlp", "/metrics"):
        _error(keyed.get(path), 401, "API key")
    for path in ("/health", "/v2/health/live", "/v2/health/ready"):  # orchestrators' probes send no key
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/v2/models/mlp/ready", headers={"X-API-Key": "k3y"}).status_code == 200


def test_new_routes_are_documented_in_openapi(run):
    spec = TestClient(create_app(run=run)).get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/models/{name}", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready"):
        assert "200" in paths[path]["get"]["responses"], path
    assert "/metrics" in paths and "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    assert body["application/json"]["schema"]["properties"]["inputs"]["items"]["properties"]["datatype"]["const"] == "BYTES"
    assert {"400", "404", "413", "415", "503", "504"} <= set(infer["responses"])
    assert infer["responses"]["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert [p["schema"].get("enum") for p in infer["parameters"] if p["name"] == "name"] == [["mlp"]]
    assert "/v1/models/{name}:predict" in paths and {"InferResponse", "ModelMetadata", "ModelReady"} <= set(spec["components"]["schemas"])


def test_kserve_sdk_rest_client(base):
    try:
        from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    except ImportError as e:
        pytest.skip(
            f"kserve is not installed ({e}): it is left out of the dev extra because kserve 0.21 pins pandas<3 and "
            "protobuf<7 (it downgrades this venv's pandas 3.1.1 and protobuf 7.36.2) and pulls uvicorn[standard] "
            "(uvloop, httptools), which would change the server under every other test; "
            "pip install 'fashionclf[kserve-client]' in a scratch venv runs this test (docs/serve-export.md)"
        )
    expected = _v1(base)

    async def talk():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            assert await v1.is_model_ready(base, "mlp")
            answer = await v1.infer(base, {"instances": [{"b64": _b64(b)} for b in IMAGES]}, model_name="mlp")
            assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected]
            assert await v2.is_server_live(base) and await v2.is_server_ready(base) and await v2.is_model_ready(base, "mlp")
            assert not await v2.is_model_ready(base, "nope")
            for binary in (False, True):
                inp = InferInput("image", [len(IMAGES)], "BYTES")
                data = IMAGES if binary else [_b64(b).encode() for b in IMAGES]
                inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
                res = await v2.infer(base, InferRequest(model_name="mlp", infer_inputs=[inp]), model_name="mlp")
                labels = [x.decode() if isinstance(x, bytes) else x for x in res.outputs[1].as_numpy().tolist()]
                assert res.outputs[1].name == "label" and labels == [p["label"] for p in expected]
                assert res.outputs[3].as_numpy().tolist() == [p["needs_review"] for p in expected]
        finally:
            await v1.close()
            await v2.close()

    asyncio.run(talk())


def test_metrics_count_known_traffic_exactly(run):
    """3 predictions of 2 images and 1 bad request, on a fresh app (its own registry, beside the module's)."""
    from prometheus_client.parser import text_string_to_metric_families

    with live_server(create_app(run=run)) as url:
        answers = [_v1(url), _v1(url, path="/v1/models/mlp:predict")]
        r = _infer(url, _request([_b64(b) for b in IMAGES]))
        assert r.status_code == 200
        labels = [p["label"] for a in answers for p in a] + r.json()["outputs"][1]["data"]
        flagged = sum(p["needs_review"] for a in answers for p in a) + sum(r.json()["outputs"][3]["data"])
        _error(httpx.post(f"{url}/v1/predict", content=b"", headers={"content-type": "application/json"}), 400)
        _error(httpx.get(f"{url}/no/such/route"), 404)
        text = httpx.get(f"{url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, sample: str, **labels) -> float:
        found = [s.value for s in families[family].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (family, sample, labels, found)
        return found[0]

    requests = "fashionclf_http_requests"
    assert value(requests, f"{requests}_total", route="/v1/predict", method="POST", status="200") == 1
    assert value(requests, f"{requests}_total", route="/v1/predict", method="POST", status="400") == 1
    assert value(requests, f"{requests}_total", route="/v1/models/{name}:predict", method="POST", status="200") == 1
    assert value(requests, f"{requests}_total", route="/v2/models/{name}/infer", method="POST", status="200") == 1
    assert value(requests, f"{requests}_total", route="(unmatched)", method="GET", status="404") == 1
    assert sum(s.value for s in families[requests].samples if s.name == f"{requests}_total") == 5  # not the scrape itself
    latency = "fashionclf_http_request_duration_seconds"
    assert value(latency, f"{latency}_count", route="/v1/predict", status="200") == 1
    assert value(latency, f"{latency}_bucket", route="/v1/predict", status="400", le="+Inf") == 1
    assert value(latency, f"{latency}_sum", route="/v2/models/{name}/infer", status="200") > 0
    assert len(labels) == 6 and {lab: labels.count(lab) for lab in labels} == {
        lab: value("fashionclf_predictions", "fashionclf_predictions_total", label=lab) for lab in set(labels)
    }
    assert sum(s.value for s in families["fashionclf_predictions"].samples if s.name.endswith("_total")) == 6
    assert value("fashionclf_review", "fashionclf_review_total") == flagged == 3
    assert value("fashionclf_review_ratio", "fashionclf_review_ratio") == pytest.approx(0.5)
    assert value("fashionclf_unknown", "fashionclf_unknown_total") == 0
    assert value("fashionclf_confidence", "fashionclf_confidence_count") == 6
    assert value("fashionclf_confidence", "fashionclf_confidence_bucket", le="1.0") == 6


def test_metrics_count_unknown_results_and_keep_registries_apart(run):
    """A result without a label, or with "unknown": true (a field another change adds), is counted unknown;
    two apps in one process keep separate counts."""
    from prometheus_client.parser import text_string_to_metric_families

    first, second = create_app(run=run), create_app(run=run)
    first.state.metrics.observe(
        [
            {"label": None, "confidence": 0.2, "needs_review": True},
            {"label": "c1", "confidence": 0.3, "needs_review": True, "unknown": True},
            {"label": "c2", "confidence": 0.99, "needs_review": False, "unknown": False},
        ]
    )

    def samples(app) -> dict:
        text = TestClient(app).get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    one, two = samples(first), samples(second)
    assert one[("fashionclf_unknown_total", ())] == 2 and two[("fashionclf_unknown_total", ())] == 0
    assert one[("fashionclf_predictions_total", (("label", "(none)"),))] == 1
    assert one[("fashionclf_review_ratio", ())] == pytest.approx(2 / 3)
    assert ("fashionclf_predictions_total", (("label", "(none)"),)) not in two
