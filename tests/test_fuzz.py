"""Property-based fuzzing of the service from its own OpenAPI schema (schemathesis, in-process ASGI).

Schemathesis generates valid and invalid requests for every operation in /openapi.json (query strings,
multipart files, JSON bodies, headers) and checks each answer against the schema: no 5xx, only documented
status codes and content types, bodies that match their declared models. On top of its checks, every
4xx/5xx must be the service's one error shape, JSON {"error": "<one line>"}. Over 1,000 requests in all.
"""

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from helpers import fuzz_call  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config._checks import NegativeDataRejectionConfig  # noqa: E402

from fashionclf.apps.serving.app import create_app  # noqa: E402
from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.models import build_model  # noqa: E402
from fashionclf.training.recipes import resolve_config  # noqa: E402

EXAMPLES = 1000  # for /v1/predict, the one route with a body and parameters
SENT: dict[str, int] = {}


def _schema():
    """Built at import: schemathesis' lazy fixture loader needs pytest's private Node._nodeid, gone in pytest 9."""
    import torch

    cfg = resolve_config("mlp", None)
    torch.manual_seed(0)
    out = Path(_TMP.name) / "run"
    save_run(out, build_model(cfg), cfg, {"calibration": {"temperature": 1.0, "threshold": 0.5}}, [], [f"c{i}" for i in range(10)], {})
    # a small pixel budget keeps generated images cheap; the shape of every answer is what is under test
    app = create_app(run=load_run(out), max_pixels_per_image=1_000_000, max_pixels_per_request=2_000_000)
    # invalid input may also be refused for its size: 413 (more images than maxItems) is a right answer to it
    rejected = [*NegativeDataRejectionConfig().expected_statuses, "413"]
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": rejected}}})
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


_TMP = tempfile.TemporaryDirectory(prefix="fashionclf-fuzz-")  # removed when the interpreter exits
schema = _schema()


def _call(case):
    # a generated "valid" multipart file is random bytes, not an image: 415 is the right answer to it
    fuzz_call(case, SENT, [schemathesis.checks.positive_data_acceptance])


FUZZ = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck), "derandomize": True}
# derandomize: the same requests on every run, so a failure here reproduces; database=None: nothing written


@pytest.mark.slow
@schema.include(path="/v1/predict").parametrize()
@settings(max_examples=EXAMPLES, **FUZZ)
def test_predict_answers_every_generated_request_by_its_schema(case):
    _call(case)


@pytest.mark.slow
@schema.exclude(path="/v1/predict").parametrize()
@settings(max_examples=100, **FUZZ)  # no parameters: hypothesis runs out of distinct requests after a few dozen
def test_other_routes_answer_every_generated_request_by_their_schema(case):
    _call(case)


@pytest.mark.slow
def test_fuzzing_sent_over_1000_requests():
    """Runs after the fuzz tests in this file (pytest keeps file order)."""
    if not SENT:
        pytest.skip("run together with the two fuzz tests above")
    protocols = {  # KServe V1 and Open Inference Protocol (V2) routes, and /metrics (issue 18)
        "GET /v1/models/{name}",
        "POST /v1/models/{name}:predict",
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/{name}",
        "GET /v2/models/{name}/ready",
        "POST /v2/models/{name}/infer",
        "GET /metrics",
    }
    assert set(SENT) == {"GET /health", "GET /v1/models", "POST /v1/predict", "GET /", *protocols}, SENT
    assert sum(SENT.values()) >= 1000, SENT
    print(f"schemathesis sent {sum(SENT.values())} requests: {SENT}")
