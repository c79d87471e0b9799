"""What every route of the service shares: the API key, security headers, and one error shape.

Every 4xx/5xx answer is JSON {"error": "one line"}: the app's own refusals (RequestError), FastAPI's routing
(404/405) and validation (422) errors, and any unexpected exception (500, logged as one line, nothing of it
sent to the client).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from fashionclf.apps.serving.limits import RequestError

log = logging.getLogger("fashionclf.serve")
OPEN_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})  # answered without the API key (probes)
# For JSON answers: nothing may load, frame or run. The page and /docs send their own, looser policy.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def startup_warnings(host: str, api_key: str | None) -> list[str]:
    if api_key or is_loopback(host):
        return []
    return [
        f"warning: listening on {host} without an API key: anyone who can reach this port can use the service "
        "(and its CPU); set --api-key-file FILE or FASHIONCLF_API_KEY, or bind --host 127.0.0.1 behind a proxy"
    ]


def inline_csp(html: str, extra: str = "") -> str:
    """A Content-Security-Policy allowing exactly the page's own inline <script> and <style> blocks, by hash."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src 'self' {hashes('script')}; style-src 'self' {hashes('style')}{extra}; "
        "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class GuardMiddleware:
    """Pure ASGI (no buffering): the API key on every route but the probes (OPEN_PATHS), headers on every answer, and the 500 net."""

    def __init__(self, app, api_key: str | None = None):
        self.app = app
        self.key = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = []
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given.append(value[7:].strip())
            elif name == b"x-api-key":
                given.append(value.strip())
        # compare_digest on fixed-length hashes: the time taken says nothing about the key or its length
        return any(hmac.compare_digest(hashlib.sha256(g).digest(), self.key) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key is not None and scope["path"] not in OPEN_PATHS and not self.authorized(scope["headers"]):
            msg = "missing or wrong API key: send the header 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            return await error(401, msg, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for k, v in HEADERS:
                    headers.setdefault(k.decode(), v.decode())
                headers.setdefault("content-security-policy", API_CSP)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:  # a bug, not the client's fault: one log line, a generic answer
            log.error("%s %s: unexpected %s: %s", scope.get("method"), scope.get("path"), type(e).__name__, e)
            if not started:
                await error(500, "internal error while answering this request; the server's log has one line about it")(
                    scope, receive, send_with_headers
                )


class BodyTooLarge(HTTPException):
    """Raised from the capped receive: an HTTPException, so FastAPI passes it on as it is (a 413), not as a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit:,} bytes; this route takes small JSON bodies")


class BodyCap:
    """Pure ASGI, for apps whose routes take small bodies (the review desk): a body whose Content-Length is over
    max_bytes is refused at once, unread; a streamed (chunked) one as soon as what has arrived passes the cap, so
    at most max_bytes plus one chunk is ever held. Every answer is the one error shape (413)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max:
            return await error(413, BodyTooLarge(self.max).detail)(scope, receive, send)
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    raise BodyTooLarge(self.max)
            return message

        await self.app(scope, capped, send)


def _validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = " ".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI, api_key: str | None) -> None:
    """The one error shape for every refusal, and the guard middleware."""

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError):
        return error(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        headers = dict(e.headers or {})
        if e.status_code == 404:
            msg = f"no route {request.url.path!r}; see /openapi.json for the routes"
        elif e.status_code == 405:
            msg = f"method {request.method} is not allowed here; allowed: {headers.get('Allow', 'see /openapi.json')}"
        else:
            msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        return error(e.status_code, msg, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return error(422, _validation_message(e))

    app.add_middleware(GuardMiddleware, api_key=api_key)
