"""The review desk under hostile input, as a real client sends it: bodies capped whatever the transfer encoding,
strict bounded fields, one error shape for every status, 404 for unknown items, the API key, and memory that stays
flat under a 200 MB body sent to a real server."""

from __future__ import annotations

import socket

import httpx
import pytest
from conftest import assert_error
from fastapi.testclient import TestClient
from helpers import fake_catalogue, live_server

from fashionclf.apps.desk.app import MAX_BODY_BYTES, create_app


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("desk")
    fake_catalogue(root / "cat.db", root / "photos", 12)
    return root / "cat.db"


@pytest.fixture()
def client(catalogue):
    return TestClient(create_app(catalogue), raise_server_exceptions=False)


def _post(client, body: bytes, path="/api/items/2/decision"):
    return client.post(path, content=body, headers={"content-type": "application/json"})


def test_numbers_strings_and_unknown_fields_are_refused_in_the_one_shape(client):
    assert_error(_post(client, b'{"version": 1e309, "action": "accept", "reviewer": "x"}'), 422, "version")
    assert_error(_post(client, b'{"version": "0", "action": "accept", "reviewer": "x"}'), 422, "version")  # no coercion
    assert_error(_post(client, b'{"version": 0.0, "action": "accept", "reviewer": "x"}'), 422, "version")
    assert_error(_post(client, b'{"version": -1, "action": "accept", "reviewer": "x"}'), 422, "version")
    assert_error(_post(client, b'{"version": 99999999999999999999999, "action": "accept", "reviewer": "x"}'), 422, "version")
    assert_error(_post(client, b'{"version": 0, "action": "accept", "reviewer": "x", "extra": 1}'), 422, "extra")
    assert_error(_post(client, b'{"version": 0, "action": "accept", "reviewer": ""}'), 422, "reviewer")
    assert_error(_post(client, b'{"version": 0, "action": "accept", "reviewer": "' + b"r" * 101 + b'"}'), 422, "reviewer")
    assert_error(_post(client, b"{not json"), 422)
    assert_error(_post(client, b"[]"), 422)


def test_unknown_items_routes_and_methods_answer_404_405_in_the_one_shape(client):
    assert_error(_post(client, b'{"version": 0, "action": "accept", "reviewer": "x"}', "/api/items/9999/decision"), 404, "no item 9999")
    assert_error(client.get("/api/items/9999/photo"), 404, "no item 9999")
    assert_error(client.get("/api/items/abc/photo"), 422, "item_id")
    assert_error(client.get(f"/api/items/{2**70}/photo"), 422, "item_id")
    assert_error(client.get("/api/items/0/photo"), 422, "item_id")
    assert_error(client.get("/nowhere"), 404, "no route")
    assert_error(client.delete("/api/stats"), 405, "DELETE")
    assert_error(client.get("/api/next", params={"reviewer": "n" * 101}), 422, "reviewer")
    assert_error(client.get("/api/recent", params={"limit": 10**6}), 422, "limit")
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
    assert client.get("/api/stats").headers["x-content-type-options"] == "nosniff"


def test_a_body_over_the_cap_is_refused_from_its_length_unread(client):
    big = b'{"version": 0, "action": "accept", "reviewer": "' + b"r" * (1 << 20) + b'"}'  # a 1 MB name
    assert_error(_post(client, big), 413, f"{MAX_BODY_BYTES:,} bytes")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_streamed_200_mb_body_is_refused_after_the_cap_and_memory_stays_flat(catalogue):
    """Chunked, with no Content-Length: the desk reads at most the cap and a chunk, answers 413 and closes; the
    process (server and client in one) grows by under 20 MB while 200 MB are offered."""
    chunk = b" " * 65536

    def body():
        for _ in range(200 * 16):  # 200 MB in 64 KB chunks
            yield chunk

    with live_server(create_app(catalogue)) as base:
        before = _rss_mb()
        try:
            r = httpx.post(f"{base}/api/items/2/decision", content=body(), headers={"content-type": "application/json"}, timeout=60)
            assert_error(r, 413, "bytes")
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered and closed while the client was still sending: refused either way
        assert _rss_mb() - before < 20
        assert httpx.get(f"{base}/api/stats", timeout=10).status_code == 200  # and it still serves


def test_the_api_key_guards_every_route(catalogue):
    client = TestClient(create_app(catalogue, api_key="s3cret"))
    assert_error(client.get("/api/stats"), 401, "API key")
    assert_error(client.get("/"), 401, "API key")
    assert client.get("/api/stats", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_binding_beyond_loopback_without_a_key_warns(catalogue, capsys, monkeypatch):
    import uvicorn

    from fashionclf.apps.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.delenv("FASHIONCLF_API_KEY", raising=False)
    assert main(["review", str(catalogue), "--host", "0.0.0.0"]) == 0
    assert "without an API key" in capsys.readouterr().err
    assert main(["review", str(catalogue), "--host", "127.0.0.1"]) == 0
    assert "without an API key" not in capsys.readouterr().err


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent(catalogue):
    with live_server(create_app(catalogue)) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /api/undo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 209715200\r\n\r\n")
            answer = b""
            while b'"}' not in answer:  # headers and body may come in separate reads
                part = s.recv(4096)
                if not part:
                    break
                answer += part
        assert answer.startswith(b"HTTP/1.1 413") and b'{"error"' in answer, answer
