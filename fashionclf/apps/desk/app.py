"""The review desk: a web page and its JSON routes over a catalogue (fashionclf.review.db).

GET / the page; GET /api/next?reviewer=NAME (claims and returns the least certain item still needing a
person); GET /api/items/{id}/photo (JPEG, at most 512 px); GET /api/items/{id}/heatmap (Grad-CAM over
what the model saw, PNG; 404 with the reason when there is none); POST /api/items/{id}/decision
{version, action: accept|correct|unknown, label, reviewer} (committed before the answer; 409 when the
item changed since that version); POST /api/undo {reviewer}; GET /api/recent; GET /api/stats (counts, and the audit of automatic labels:
review/audit.py); GET /metrics (the audit in Prometheus' text format); POST /api/audit/tighten (the review rule
fitted again on the audited photos; automatic photos below it go back to the queue).

Each request opens its own SQLite connection (WAL: readers never wait for the writer), so any number
of reviewers and server processes can share one catalogue file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import re
import threading
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from fashionclf.apps.serving import guard
from fashionclf.review import audit, db
from fashionclf.review.learn import EVERY, DeskLearner

PAGE = (Path(__file__).parent / "page.html").read_text()


def _csp(page: str) -> str:
    """A strict Content-Security-Policy: the page's own inline script and style (by hash), images from this server."""

    def digest(tag):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    return (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


CSP = _csp(PAGE)


MAX_BODY_BYTES = 16 * 1024  # a decision is under 1 KB; nothing the desk takes needs more
MAX_NAME = 100  # a reviewer's name
MAX_LABEL = 200  # a class name
MAX_ID = 2**62  # item ids and versions: SQLite integers, well inside 64 bits
STRICT = ConfigDict(extra="forbid", strict=True)  # no unknown fields, no "0" for 0, no 1.0 for 1
ItemId = PathParam(ge=1, le=MAX_ID, description="the item's id in the catalogue")


class Decision(BaseModel):
    model_config = STRICT
    version: int = Field(ge=0, le=MAX_ID, description="the item's version as read: a stale one is a 409")
    action: Literal["accept", "correct", "unknown"]
    reviewer: str = Field(min_length=1, max_length=MAX_NAME)
    label: str | None = Field(None, min_length=1, max_length=MAX_LABEL, description="the class, for action correct")


class Undo(BaseModel):
    model_config = STRICT
    reviewer: str = Field(min_length=1, max_length=MAX_NAME)


class HeatMaps:
    """Grad-CAM for catalogue items with the run that labelled them; one at a time (hooks on a shared model)."""

    def __init__(self, run, method: str = "grabcut"):
        from fashionclf.review.heatmap import last_conv

        self.run, self.method, self.lock = run, method, threading.Lock()
        self.reason = None
        if run is None:
            self.reason = "no run given (fashionclf review DB --run RUN): no heat map"
        elif all(last_conv(m.model) is None for m in [run, *getattr(run, "partners", [])]):
            self.reason = f"{run.meta['model']} has no convolution layer, so it has no heat map (Grad-CAM needs one)"

    def png(self, path: str, label: str) -> bytes:
        from fashionclf.infer.predict import png_bytes
        from fashionclf.review.heatmap import grad_cam, overlay

        with self.lock:
            member, image, column = self.decider(path, label)
            cam = grad_cam(member.model, image, column)
        return png_bytes(overlay(image, cam).transpose(2, 0, 1))

    def decider(self, path: str, label: str):
        """The member that decided the label, with the image it saw: one run, or of a ready model's members (each
        converting the photo its own way) the one whose calibrated probability for the label is highest and that
        has a convolution, so the map shows where the voice that carried the answer looked. Returns the member, its
        image and the label's column in its own class order (members name classes alike in any order)."""
        import torch

        from fashionclf.infer.predict import calibrated_probs, class_order, preprocess_file
        from fashionclf.review.heatmap import last_conv

        members = [m for m in [self.run, *getattr(self.run, "partners", [])] if last_conv(m.model) is not None]
        if len(members) == 1:  # one voice: nothing to compare, no extra forward pass
            m = members[0]
            return m, preprocess_file(path, method=self.method, run=m), int(class_order(m, self.run)[self.run.classes.index(label)])
        best = None
        for member in members:
            column = int(class_order(member, self.run)[self.run.classes.index(label)])  # label in the member's order
            image = preprocess_file(path, method=self.method, run=member)
            p = float(calibrated_probs(member, member.logits(torch.as_tensor(image)[None]))[0, column])
            if best is None or p > best[0]:
                best = (p, member, image, column)
        return best[1:]


def _photo_jpeg(path: str, longest: int = 512) -> bytes:
    import cv2
    from PIL import Image

    from fashionclf.data.images import load_rgb

    rgb = load_rgb(path)
    s = longest / max(rgb.shape[:2])
    if s < 1:
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _image(item: dict | None, item_id: int, render, media_type: str) -> Response:
    """The image render() makes for a catalogue item, or a 404 saying why there is none."""
    from fashionclf.data.images import ImageError

    if item is None:
        return JSONResponse({"error": f"no item {item_id}"}, status_code=404)
    try:
        return Response(render(), media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})
    except ImageError as e:
        return JSONResponse({"error": f"{item['path']}: {e}"}, status_code=404)


def create_app(catalogue: str | Path, run=None, method: str = "grabcut", api_key: str | None = None, refit_every: int = EVERY) -> FastAPI:
    """The review desk over a catalogue file; `run` (a loaded Run) gives heat maps, and where it is a head on an
    embedding store, refits on the decisions every `refit_every` of them (review/learn.py). The service's guards: one
    error shape {"error": ...} for every refusal, the API key on every route if given, security headers, bodies capped."""
    catalogue = Path(catalogue)
    db.connect(catalogue).close()  # a clear error now, not on the first request
    maps = HeatMaps(run, method)
    learner = DeskLearner(run, catalogue, refit_every, model_lock=maps.lock)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        learner.close()  # a refit under way finishes; none starts

    app = FastAPI(title="fashionclf review", description="Decide the photos the model was unsure of.", lifespan=lifespan)
    app.state.catalogue, app.state.heatmaps, app.state.learner = catalogue, maps, learner

    local = threading.local()

    def conn():
        """This worker thread's connection, kept open: closing the last one would checkpoint the WAL every request."""
        if getattr(local, "conn", None) is None:
            local.conn = db.connect(catalogue)
        return local.conn

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/api/next")
    def next_item(
        reviewer: str = Query("anonymous", min_length=1, max_length=MAX_NAME),
        skip: str = Query("", max_length=2000, description="comma-separated item ids not to offer"),
    ):
        ids = tuple(int(s) for s in skip.split(",")[:200] if s.strip().isdigit() and len(s.strip()) < 19)
        c = conn()
        item = db.claim_next(c, reviewer, ids)
        return {
            "item": item,
            "stats": db.stats(c),
            "audit": audit.stats(c),
            "classes": db.classes(c),
            "heatmap": maps.reason is None,
            "why_no_heatmap": maps.reason,
            "suggestions": learner.suggestions(item),
        }

    @app.get("/api/items/{item_id}/photo", response_class=Response, responses=_image_responses("image/jpeg"))
    def photo(item_id: int = ItemId):
        item = db.item(conn(), item_id)
        return _image(item, item_id, lambda: _photo_jpeg(item["path"]), "image/jpeg")

    @app.get("/api/items/{item_id}/heatmap", response_class=Response, responses=_image_responses("image/png"))
    def heatmap(item_id: int = ItemId):
        if maps.reason:
            return JSONResponse({"error": maps.reason}, status_code=404)
        item = db.item(conn(), item_id)
        return _image(item, item_id, lambda: maps.png(item["path"], item["label"]), "image/png")

    @app.post("/api/items/{item_id}/decision")
    def decision(d: Decision, item_id: int = ItemId):
        c = conn()
        done = db.decide(c, item_id, d.version, d.action, d.reviewer, d.label)
        learner.decided()
        return {"item": done, "stats": db.stats(c)}

    @app.post("/api/undo")
    def undo(u: Undo):
        c = conn()
        item = db.undo(c, u.reviewer)
        if item is not None:
            learner.decided()
        return {"item": item, "stats": db.stats(c)}

    _add_summary_routes(app, conn, learner)
    _add_audit_routes(app, conn)
    _add_catalogue_errors(app)
    app.add_middleware(guard.BodyCap, max_bytes=MAX_BODY_BYTES)
    guard.install(app, api_key)  # outermost: its headers and error shape cover the cap's answers too
    return app


def _image_responses(media_type: str) -> dict:
    """What an image route answers: the image, or a 404 in the one error shape saying why there is none."""
    error = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
    return {200: {"content": {media_type: {}}, "description": "the image"}, 404: {**error, "description": "no such item or image"}}


def _add_catalogue_errors(app: FastAPI) -> None:
    """The catalogue's refusals in the one error shape: 404 for an unknown item, 409 for a stale version, else 400."""

    @app.exception_handler(db.CatalogueError)
    async def _bad(request: Request, e: db.CatalogueError):
        return JSONResponse({"error": str(e)}, status_code=404 if isinstance(e, db.NoItem) else 400)

    @app.exception_handler(db.Conflict)
    async def _conflict(request: Request, e: db.Conflict):
        return JSONResponse({"error": str(e)}, status_code=409)


def _add_summary_routes(app: FastAPI, conn, learner: DeskLearner) -> None:
    @app.get("/api/recent")
    def recent(limit: int = Query(20, ge=1, le=200)):
        c = conn()
        return {"decisions": db.recent(c, max(1, min(limit, 200)))}

    @app.get("/api/stats")
    def stats():
        c = conn()
        return {**db.stats(c), "audit": audit.stats(c), "learning": learner.status()}


def _add_audit_routes(app: FastAPI, conn) -> None:
    """POST /api/audit/tighten and GET /metrics (review/audit.py); conn() gives this thread's connection."""

    @app.post("/api/audit/tighten")
    def tighten():
        c = conn()
        return {**audit.tighten(c), "stats": db.stats(c)}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
    def metrics():
        return Response(_audit_metrics(audit.stats(conn())), media_type="text/plain; version=0.0.4; charset=utf-8")


def _audit_metrics(a: dict) -> bytes:
    """The audit as Prometheus gauges (a fresh registry per scrape: the catalogue is the state, not this process)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    lo, hi = a["precision_interval"]
    for name, doc, value in [
        ("audited", "automatic photos sent to a person at random", a["audited"]),
        ("decided", "audited photos decided", a["decided"]),
        ("errors", "audited photos whose automatic label was wrong", a["errors"]),
        ("precision_lower", f"lower end of the exact {1 - a['delta']:.0%} interval on the automatic labels' precision", lo),
        ("precision_upper", "upper end of that interval", hi),
        ("target_precision", "the promised precision", a["target_precision"]),
        ("promise_broken", "1 when the audit shows precision below the promise", float(a["status"] == "broken")),
    ]:
        Gauge(f"fashionclf_audit_{name}", doc, registry=reg).set(value)
    return generate_latest(reg)
