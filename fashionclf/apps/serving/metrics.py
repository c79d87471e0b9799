"""GET /metrics: the service's Prometheus metrics, from a registry of the app's own (two apps in one process
never share or collide), in the text exposition format of prometheus_client.

Requests are counted and timed by route template ("/v2/models/{name}/infer", never the raw path: a scan of
random paths adds one series, "(unmatched)"), method and status, in a pure ASGI middleware outside the
guard, so refusals (401, 413, 404...) are counted too. Every prediction, whichever route made it, is
counted by label, into the review count and share, the unknown count, and a confidence histogram.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from starlette.routing import Match

from fashionclf.apps.serving import schemas

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # any other: "OTHER"
UNMATCHED = "(unmatched)"  # the route of a path no route takes
NO_LABEL = "(none)"  # the label of a prediction without one
GONE = "499"  # the status of a request whose client left before an answer started (nginx's convention)


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise ValueError("/metrics needs prometheus_client: pip install 'fashionclf[serve]' (or prometheus-client)") from None
    return prometheus_client


class ServeMetrics:
    """The app's metrics and the registry that holds them."""

    def __init__(self, classes: list[str]):
        pc = _prometheus()
        self.registry = r = pc.CollectorRegistry()
        by = ["route", "method", "status"]
        self.requests = pc.Counter(
            "fashionclf_http_requests", "HTTP requests answered, by route template, method and status", by, registry=r
        )
        self.latency = pc.Histogram(
            "fashionclf_http_request_duration_seconds",
            "time from a request's arrival to its last byte of answer, by route template, method and status",
            by,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = pc.Counter(
            "fashionclf_predictions",
            f"images classified, by predicted label ({NO_LABEL!r} for a prediction without one)",
            ["label"],
            registry=r,
        )
        self.review = pc.Counter("fashionclf_review", "predictions flagged needs_review: a person should check them", registry=r)
        self.review_ratio = pc.Gauge("fashionclf_review_ratio", "share of all predictions so far flagged needs_review", registry=r)
        self.unknown = pc.Counter("fashionclf_unknown", 'predictions with no label (label null, or "unknown": true)', registry=r)
        self.audit = pc.Counter("fashionclf_audit", "automatic labels drawn for a person's check (--audit-share)", registry=r)
        self.confidence = pc.Histogram(
            "fashionclf_confidence", "calibrated confidence of each prediction's label", buckets=CONFIDENCE_BUCKETS, registry=r
        )
        for c in classes:  # every class shows, at 0, before its first prediction
            self.predictions.labels(c)
        self._lock = threading.Lock()
        self._total = self._flagged = 0
        self.exposition = pc.generate_latest
        self.content_type = pc.CONTENT_TYPE_LATEST

    def request(self, route: str, method: str, status: str, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(route, method, status).inc()
        self.latency.labels(route, method, status).observe(seconds)

    def observe(self, results: list[dict]) -> None:
        """Count one request's predictions (on the worker thread that made them, before the answer leaves)."""
        flagged = 0
        for r in results:
            label = r.get("label")
            self.predictions.labels(NO_LABEL if label is None else str(label)).inc()
            if label is None or r.get("unknown") is True:
                self.unknown.inc()
            if r.get("needs_review"):
                flagged += 1
            if r.get("audit"):
                self.audit.inc()
            confidence = r.get("confidence")
            if isinstance(confidence, int | float) and math.isfinite(confidence):
                self.confidence.observe(float(confidence))
        self.review.inc(flagged)
        with self._lock:
            self._total += len(results)
            self._flagged += flagged
            if self._total:
                self.review_ratio.set(self._flagged / self._total)


def route_template(router, scope) -> str:
    """The template of the route that takes this request (or would, but for its method), as Starlette matches."""
    partial = None
    for route in router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:
            partial = route.path
    return partial or UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and counts it when its last byte of answer is handed to the server."""

    def __init__(self, app, metrics: ServeMetrics, router):
        self.app, self.metrics, self.router = app, metrics, router

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        route = route_template(self.router, scope)
        status, done = GONE, False

        def record():
            nonlocal done
            if not done:
                done = True
                self.metrics.request(route, scope.get("method", ""), status, time.perf_counter() - start)

        async def counted_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the client can have the whole answer: a scrape after it sees this request
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            record()


def install(app: FastAPI, classes: list[str], keyed: tuple[int, ...] = ()) -> ServeMetrics:
    """The middleware (outermost: it sees the guard's refusals) and GET /metrics (behind the API key, if any)."""
    metrics = ServeMetrics(classes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, router=app.router)
    text = {"description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: text, **schemas.error_responses(*keyed)})
    def prometheus_metrics():
        return Response(metrics.exposition(metrics.registry), media_type=metrics.content_type)

    return metrics
