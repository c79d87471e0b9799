"""Property-based fuzzing of the review desk from its own OpenAPI schema (schemathesis, in-process ASGI), as
tests/test_fuzz.py does for the service: no 5xx, answers that match the schema, every 4xx the one error shape
{"error": "<one line>"}; over 1,000 requests in all."""

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from helpers import fake_catalogue, fuzz_call  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from fashionclf.apps.desk.app import create_app  # noqa: E402

SENT: dict[str, int] = {}
_TMP = tempfile.TemporaryDirectory(prefix="fashionclf-desk-fuzz-")  # removed when the interpreter exits


def _schema():
    """Built at import, as in test_fuzz.py: a catalogue of 12 photos and the desk over it."""
    root = Path(_TMP.name)
    fake_catalogue(root / "cat.db", root / "photos", 12)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(root / "cat.db"))


schema = _schema()
FUZZ = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck), "derandomize": True}


def _call(case):
    # a decision on a real item may be refused for its version (409) or class (400): right answers, not in the schema
    fuzz_call(case, SENT, [schemathesis.checks.positive_data_acceptance, schemathesis.checks.status_code_conformance])


@pytest.mark.slow
@schema.include(path="/api/items/{item_id}/decision").parametrize()
@settings(max_examples=700, **FUZZ)
def test_decisions_answer_every_generated_request_by_their_schema(case):
    _call(case)


@pytest.mark.slow
@schema.exclude(path="/api/items/{item_id}/decision").parametrize()
@settings(max_examples=60, **FUZZ)
def test_other_desk_routes_answer_every_generated_request_by_their_schema(case):
    _call(case)


@pytest.mark.slow
def test_desk_fuzzing_sent_over_1000_requests():
    """Runs after the two fuzz tests above (pytest keeps file order)."""
    if not SENT:
        pytest.skip("run together with the two fuzz tests above")
    assert "POST /api/items/{item_id}/decision" in SENT and "GET /api/next" in SENT and "POST /api/undo" in SENT, SENT
    assert sum(SENT.values()) >= 1000, SENT
    print(f"schemathesis sent {sum(SENT.values())} requests to the desk: {SENT}")
