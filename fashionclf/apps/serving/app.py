"""An HTTP service around one trained run: FastAPI, the model loaded once, a web page to try it.

Endpoints: GET /health, GET /v1/models, POST /v1/predict (multipart `file` fields, or the KServe V1
JSON shape {"instances": [{"b64": "..."}]}), GET / (the page), GET /openapi.json (and /docs with docs=True);
the KServe V1 and Open Inference Protocol (V2) routes of protocols.py; GET /metrics (metrics.py).
Every refusal is JSON {"error": message} with its status (guard.py). The body is read with a hard byte
cap, pixels are budgeted from the image headers before decoding, and decoding, preprocessing and inference
run on a bounded pool of worker threads (limits.py), so the event loop keeps answering /health.

Adding a route that takes images: call `answer` in create_app with a reader of its images (it runs /v1/predict's
three steps: admitted, the reader, ticket.run of _work, which starts with check_pixels), declare its shapes in
schemas.py, and add its test.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import threading
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from fashionclf.api import load_run
from fashionclf.apps.serving import guard, metrics, protocols, schemas
from fashionclf.apps.serving.limits import STATUS, Gate, Limits, RequestError, admitted, check_pixels, read_images
from fashionclf.data.images import ImageError, decode_cost, load_rgb
from fashionclf.engine.runs import LoadedRun
from fashionclf.evaluation.calibrate import promise
from fashionclf.infer.predict import convert_for_runs, decode_side, png_bytes, predict_converted, rule_of
from fashionclf.review import audit

__all__ = ["STATUS", "Limits", "Predictor", "RequestError", "create_app"]


class Predictor:
    """The run, loaded once; one inference at a time (two cores: concurrent forwards would only thrash)."""

    def __init__(self, run: LoadedRun, max_pixels: int = Limits().max_pixels_per_image, backend: str = "torch", audit_share: float = 0.0):
        self.run, self.max_pixels, self.audit_share = run, max_pixels, audit.check_share(audit_share)
        self.lock = threading.Lock()
        self.backend = None  # PyTorch
        self.runs = [run, *run.partners]  # a ready model asks its partners too, each with its own conversion
        self.decode_side = decode_side(self.runs)  # how small a JPEG may be decoded for them all
        if backend == "onnx" and run.partners:
            raise ValueError("--backend onnx takes one run; the ready model asks several: serve it with --backend torch")
        if backend == "onnx":
            try:
                from fashionclf.infer.export import OnnxModel, export_checked
            except ImportError as e:
                raise ValueError(f"--backend onnx needs onnx and onnxruntime ({e}); pip install onnx onnxruntime") from None
            # Exported in memory at start-up (the run folder stays as it is), checked as `fashionclf export` checks.
            self.backend = OnnxModel(export_checked(run)[0])
        elif backend != "torch":
            raise ValueError(f"unknown backend {backend!r}; valid: torch, onnx")

    def _cost(self, blob: bytes, index: int) -> int:
        try:
            return decode_cost(blob, self.decode_side)
        except ImageError as e:
            raise RequestError(STATUS.get(e.kind, 422), f"image {index}: {e}") from None

    def prepare(self, blob: bytes, index: int, hold=None) -> list[np.ndarray]:
        """The photo as each run takes it: the same path as `fashionclf predict`. hold: a context that holds the
        decode's memory (Gate.decoding) until the full-size image is freed."""
        try:
            with hold or contextlib.nullcontext():
                return convert_for_runs(self.runs, load_rgb(blob, self.max_pixels, self.decode_side))
        except ImageError as e:
            raise RequestError(STATUS.get(e.kind, 422), f"image {index}: {e}") from None

    def predict(self, blobs: list[bytes], top_k: int = 3, preprocessed: bool = False, gate: Gate | None = None) -> list[dict]:
        """gate: decode under its memory budget; an image that alone needs more is refused before any is decoded."""
        if gate is None:
            images = [self.prepare(b, i) for i, b in enumerate(blobs)]
        else:
            costs = [self._cost(b, i) for i, b in enumerate(blobs)]
            gate.check_decodes(costs)
            images = [self.prepare(b, i, gate.decoding(c, i)) for i, (b, c) in enumerate(zip(blobs, costs))]
        with self.lock, torch.inference_mode():
            results = predict_converted(self.runs, images, top_k, backend=self.backend, review=self.run.review)
        if preprocessed:
            for r, img in zip(results, images):
                r["preprocessed_png_b64"] = base64.b64encode(png_bytes(img[0])).decode()
        if self.audit_share:  # automatic labels drawn (by content) for a person's check: flagged, and said so
            for r, blob in zip(results, blobs):
                if not r["needs_review"] and audit.drawn(hashlib.sha256(blob).hexdigest(), self.audit_share):
                    r.update(needs_review=True, audit=True)
        return results


def create_app(
    run_dir: str | Path | None = None,
    run: LoadedRun | None = None,
    backend: str = "torch",
    *,
    api_key: str | None = None,
    docs: bool = False,
    trim_memory: bool = True,
    audit_share: float = 0.0,
    **limits,
) -> FastAPI:
    """The service for one run (a folder, or an already loaded LoadedRun), on PyTorch or onnxruntime.

    api_key: required on every route but /health (`Authorization: Bearer KEY` or `X-API-Key: KEY`).
    docs: serve Swagger UI at /docs from the swagger-ui-bundle package (never from a CDN).
    trim_memory: give freed heap back to the system when the workers fall idle after decoding photos.
    audit_share: the share of automatic labels flagged for a person anyway, with "audit": true (review/audit.py).
    limits: any field of limits.Limits (max_body_mb, max_files, max_pixels_per_image, max_pixels_per_request,
    workers, queue, timeout_s, max_buffered_mb); the rest keep their defaults.
    """
    lim = Limits(**limits)
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty; give a non-empty key or none")
    run = run or load_run(run_dir)
    predictor = Predictor(run, max_pixels=lim.max_pixels_per_image, backend=backend, audit_share=audit_share)
    gate = Gate(lim, trim=trim_memory)
    app = FastAPI(
        title="fashionclf",
        description="Categorise product photos with a trained fashionclf run.",
        docs_url=None,  # the default pages load Swagger UI and ReDoc from a CDN
        redoc_url=None,
    )
    app.state.run, app.state.predictor, app.state.limits, app.state.gate = run, predictor, lim, gate
    app.router.add_event_handler("shutdown", gate.close)
    guard.install(app, api_key)
    keyed = (401,) if api_key else ()
    n_classes = len(run.classes)
    app.state.metrics = metrics.install(app, list(run.classes), keyed)  # after the guard: its middleware is outside it
    answer = _answerer(predictor, gate, app.state.metrics.observe)

    async def predict_v1(request: Request, top_k: int, preprocessed: bool) -> dict:
        return {"predictions": await answer(lambda ticket: read_images(request, lim, ticket), top_k, preprocessed)}

    @app.get("/health", response_model=schemas.Health)
    def health():
        return {"status": "ok", "model": run.meta["model"], "backend": backend}

    @app.get("/v1/models", response_model=schemas.ModelInfo, responses=schemas.error_responses(*keyed))
    def models():
        return _model_info(run, backend)

    @app.post(
        "/v1/predict",
        response_model=schemas.Predictions,
        response_model_exclude_none=True,
        responses=schemas.error_responses(400, *keyed, 408, 413, 415, 422, 503, 504),
        openapi_extra=schemas.predict_request_body(lim.max_files),
    )
    async def predict(
        request: Request,
        top_k: int = schemas.top_k_query(n_classes),
        preprocessed: bool = schemas.preprocessed_query(),
    ):
        return await predict_v1(request, top_k, preprocessed)

    protocols.add_routes(app, protocols.Served(run.meta["model"], list(run.classes), backend, lim, keyed, answer, predict_v1))

    page, csp = _page(run.meta["model"], promise(rule_of(run)))

    @app.get("/", response_class=HTMLResponse, responses=schemas.error_responses(*keyed))
    def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    if docs:
        _add_docs(app)
    return app


def _model_info(run: LoadedRun, backend: str) -> dict:
    m = run.metrics
    return {
        "name": run.meta["model"],
        "backend": backend,
        "classes": list(run.classes),
        "input": run.meta.get("input"),
        "metrics": {k: m.get(k) for k in ("test_accuracy", "val_accuracy", "params", "infer_images_per_s") if k in m},
        "calibration": m.get("calibration"),
        "promise": promise(rule_of(run)),
        "ready": run.meta.get("ready"),
    }


def _answerer(predictor: Predictor, gate: Gate, observe):
    """answer(read, top_k, preprocessed) for every route that takes images: one deadline (408/504), the images
    from `read(ticket)` (a capped body), then _work on a worker (503 when the queue is full)."""

    async def answer(read, top_k: int, preprocessed: bool) -> list[dict]:
        async with admitted(gate, gate.limits) as ticket:
            blobs = await read(ticket)
            return await ticket.run(_work, predictor, gate, blobs, top_k, preprocessed, observe)

    return answer


def _work(predictor: Predictor, gate: Gate, blobs: list[bytes], top_k: int, preprocessed: bool, observe=None) -> list[dict]:
    """On a worker thread: the pixel budget from the headers, then decoding, preprocessing and inference;
    observe(results) counts them (metrics.py) before the answer leaves."""
    pixels = check_pixels(blobs, gate.limits)
    with gate.lock:
        gate.decoded += pixels
    results = predictor.predict(blobs, top_k, preprocessed, gate=gate)
    if observe is not None:
        observe(results)
    return results


def _page(model: str, rule: str) -> tuple[str, str]:
    """The page with the model's name and its review rule in words (escaped), and a CSP that allows its own inline
    script and style only."""
    page = PAGE.replace("{{MODEL}}", html.escape(model)).replace("{{PROMISE}}", html.escape(rule))
    return page, guard.inline_csp(page)


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its files served from the swagger-ui-bundle package: nothing from a third party."""
    try:
        import swagger_ui_bundle
    except ImportError:
        raise ValueError("--docs serves Swagger UI from the swagger-ui-bundle package: pip install swagger-ui-bundle") from None
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")
    body = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="fashionclf API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    ).body.decode()
    csp = guard.inline_csp(body, extra=" 'unsafe-inline'")  # Swagger UI sets style attributes; its script is hashed

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return HTMLResponse(body, headers={"Content-Security-Policy": csp})


# The page (page.html beside this file): no external scripts, styles or fonts, so it works offline and behind strict CSPs.
PAGE = (Path(__file__).parent / "page.html").read_text()
