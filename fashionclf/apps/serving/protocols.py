"""The ecosystem's inference protocols over the same model, guards and answers as /v1/predict.

KServe V1: GET /v1/models/{name} ({"name", "ready"}) and POST /v1/models/{name}:predict, which is /v1/predict
under the model's name (the same handler). Open Inference Protocol, V2 (KServe v2, Triton's HTTP API):
GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready and
POST /v2/models/{name}/infer. Its one input, "image", is BYTES of shape [n]: each element an image file,
as JSON strings (base64, or the raw string tritonclient sends) or in the binary tensor extension
(Inference-Header-Content-Length: the JSON header's length; per element a 4-byte little-endian length and
the bytes). Its outputs: probabilities FP32 [n, classes], label BYTES [n], confidence FP32 [n],
needs_review BOOL [n], unknown BOOL [n] (none of the classes: label ""), each as JSON or binary as the
request asks; "classification" ranks probabilities as
Triton does ("probability:index:label"). An unknown model name is 404; every refusal is {"error": ...}.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Header, Request
from fastapi.responses import Response
from pydantic import ValidationError

from fashionclf.apps.serving import schemas
from fashionclf.apps.serving.limits import Limits, RequestError, capped_stream
from fashionclf.core import __version__

HEADER = "Inference-Header-Content-Length"
PLATFORMS = {"torch": "pytorch", "onnx": "onnxruntime_onnx"}
DATATYPES = {"probabilities": "FP32", "label": "BYTES", "confidence": "FP32", "needs_review": "BOOL", "unknown": "BOOL"}
EXTENSIONS = ["binary_tensor_data", "classification"]
MAX_NESTING = 8  # the most dimensions a shape may have


@dataclass(frozen=True)
class Served:
    """What the protocol routes need from create_app: the model, the limits, and the two ways in.

    answer(read, top_k, preprocessed): /v1/predict's steps for images that `read(ticket)` returns;
    predict_v1(request, top_k, preprocessed): /v1/predict's whole answer.
    """

    name: str
    classes: list[str]
    backend: str
    limits: Limits
    keyed: tuple[int, ...]
    answer: Callable[..., Awaitable[list[dict]]]
    predict_v1: Callable[..., Awaitable[dict]]

    def check(self, name: str) -> None:
        if name != self.name:
            raise RequestError(404, f"no model {name[:100]!r} on this server; it serves {self.name!r} (GET /v1/models)")


def add_routes(app: FastAPI, s: Served) -> None:
    _add_v1(app, s)
    _add_v2_server(app, s)
    _add_v2_model(app, s)


def _add_v1(app: FastAPI, s: Served) -> None:
    @app.post(
        "/v1/models/{name}:predict",
        response_model=schemas.Predictions,
        response_model_exclude_none=True,
        responses=schemas.error_responses(400, *s.keyed, 404, 408, 413, 415, 422, 503, 504),
        openapi_extra=schemas.predict_request_body(s.limits.max_files),
    )
    async def kserve_v1_predict(
        request: Request,
        name: str = schemas.model_name_path(s.name),
        top_k: int = schemas.top_k_query(len(s.classes)),
        preprocessed: bool = schemas.preprocessed_query(),
    ):
        s.check(name)
        return await s.predict_v1(request, top_k, preprocessed)

    # After :predict, so that other methods on "/v1/models/NAME:predict" are answered 405 with Allow: POST.
    @app.get("/v1/models/{name}", response_model=schemas.ModelReady, responses=schemas.error_responses(*s.keyed, 404))
    def kserve_v1_model(name: str = schemas.model_name_path(s.name)):
        if name.endswith(":predict"):  # GET on the predict route: Starlette's {name} takes "NAME:predict" here
            raise RequestError(405, "method GET is not allowed here; allowed: POST", {"Allow": "POST"})
        s.check(name)
        return {"name": s.name, "ready": True}


def _add_v2_server(app: FastAPI, s: Served) -> None:
    errors = schemas.error_responses(*s.keyed)

    @app.get("/v2", response_model=schemas.ServerMetadata, responses=errors)
    def v2_server_metadata():
        return {"name": "fashionclf", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", response_model=schemas.ServerLive, responses=errors)
    def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready", response_model=schemas.ServerReady, responses=errors)
    def v2_ready():
        return {"ready": True}  # the model is loaded before the port opens


def _add_v2_model(app: FastAPI, s: Served) -> None:
    errors = schemas.error_responses(*s.keyed, 404)

    @app.get("/v2/models/{name}", response_model=schemas.ModelMetadata, responses=errors)
    def v2_model_metadata(name: str = schemas.model_name_path(s.name)):
        s.check(name)
        return model_metadata(s)

    @app.get("/v2/models/{name}/ready", response_model=schemas.ModelReady, responses=errors)
    def v2_model_ready(name: str = schemas.model_name_path(s.name)):
        s.check(name)
        return {"name": s.name, "ready": True}

    @app.post(
        "/v2/models/{name}/infer",
        response_model=schemas.InferResponse,
        response_model_exclude_none=True,
        responses={
            200: schemas.INFER_BINARY,
            **schemas.error_responses(400, *s.keyed, 404, 408, 413, 415, 422, 503, 504, wording=schemas.V2_ERRORS),
        },
        openapi_extra=schemas.infer_request_body(),
    )
    async def v2_infer(
        request: Request,
        name: str = schemas.model_name_path(s.name),
        inference_header_content_length: int | None = Header(
            None, ge=0, description="binary tensor extension: the length of the JSON request at the body's start"
        ),
    ):
        s.check(name)
        parsed = []

        async def read(ticket) -> list[bytes]:
            body = await read_body(request, s.limits, ticket)
            req, blobs = parse_infer(body, inference_header_content_length, s.limits)
            parsed.append(req)
            return blobs

        results = await s.answer(read, len(s.classes), False)
        return encode_answer(parsed[0], results, s)


def model_metadata(s: Served) -> dict:
    outputs = [{"name": n, "datatype": DATATYPES[n], "shape": [-1]} for n in schemas.OUTPUT_NAMES]
    outputs[0]["shape"] = [-1, len(s.classes)]
    return {
        "name": s.name,
        "versions": ["1"],
        "platform": PLATFORMS.get(s.backend, s.backend),
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


async def read_body(request: Request, limits: Limits, ticket) -> bytes:
    """The whole body under --max-body-mb (and the memory budget), as /v1/predict reads its JSON."""
    from starlette.requests import ClientDisconnect

    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(415, f"Content-Encoding {encoding[:40]!r} is not accepted; send the request uncompressed")
    body = bytearray()
    try:
        async for chunk in capped_stream(request, limits, ticket):
            body += chunk
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the body was complete") from None
    return bytes(body)


def _problems(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        where = " ".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts).replace("\n", " ")[:500]


def parse_infer(body: bytes, header_length: int | None, limits: Limits) -> tuple[schemas.InferRequest, list[bytes]]:
    """The request and its images, each refusal a 4xx: shape, element count, binary layout, base64."""
    if not body:
        raise RequestError(400, 'empty request: send a V2 inference request {"inputs": [{"name": "image", "datatype": "BYTES", ...}]}')
    head, tail = body, b""
    if header_length is not None:
        if header_length > len(body):
            raise RequestError(400, f"{HEADER} {header_length} is beyond the body's {len(body)} bytes")
        head, tail = body[:header_length], body[header_length:]
    try:
        req = schemas.InferRequest.model_validate_json(head)
    except ValueError as e:  # pydantic's ValidationError: bad JSON or not the declared shape
        raise RequestError(400, f"not a V2 inference request: {_problems(e) if isinstance(e, ValidationError) else e}") from None
    tensor = req.inputs[0]
    n = math.prod(tensor.shape)
    if n > limits.max_files:
        raise RequestError(413, f"shape {tensor.shape}: {n} images; at most {limits.max_files} per request (--max-files)")
    if any(d != 1 for d in tensor.shape[1:]):
        raise RequestError(400, f"shape {tensor.shape}: input 'image' is [n] images (or [n, 1], as Triton clients send BYTES)")
    if n == 0:
        raise RequestError(400, f"shape {tensor.shape} holds no image")
    _check_outputs(req)
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is not None and tensor.data is not None:
        raise RequestError(400, "input 'image' has both data and binary_data_size; send one")
    if size is not None:
        if size != len(tail):
            raise RequestError(400, f"binary_data_size {size} but {len(tail)} bytes follow the JSON header ({HEADER})")
        raw = split_bytes(tail, n)
    elif tensor.data is not None:
        if tail:
            raise RequestError(400, f"{len(tail)} bytes follow the JSON header, but no input has binary_data_size")
        raw = flatten(tensor.data, n)
    else:
        raise RequestError(400, "input 'image' has neither data nor parameters.binary_data_size")
    return req, [element(b) for b in raw]


def _check_outputs(req: schemas.InferRequest) -> None:
    names = [o.name for o in req.outputs or []]
    if len(set(names)) != len(names):
        raise RequestError(400, f"outputs {names}: each output at most once")
    for o in req.outputs or []:
        if o.parameters and o.parameters.classification and o.name != "probabilities":
            raise RequestError(400, f"output {o.name!r}: classification ranks 'probabilities' only")


def split_bytes(raw: bytes, n: int) -> list[bytes]:
    """BYTES elements in the binary extension: each a 4-byte little-endian length, then that many bytes."""
    out, i = [], 0
    while i < len(raw):
        if len(out) == n:
            raise RequestError(400, f"the binary data holds more than the {n} elements its shape says")
        if i + 4 > len(raw):
            raise RequestError(400, f"element {len(out)}: the binary data ends inside its 4-byte length")
        size = int.from_bytes(raw[i : i + 4], "little")
        i += 4
        if i + size > len(raw):
            raise RequestError(400, f"element {len(out)}: its length {size:,d} runs past the binary data")
        out.append(raw[i : i + size])
        i += size
    if len(out) != n:
        raise RequestError(400, f"the binary data holds {len(out)} elements; the shape says {n}")
    return out


def flatten(data: list, n: int) -> list[bytes]:
    """JSON tensor data, flat or nested (row-major), as the bytes of each string; no recursion."""
    out, stack, end = [], [iter(data)], object()
    while stack:
        item = next(stack[-1], end)
        if item is end:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) >= MAX_NESTING:
                raise RequestError(400, f"data nests deeper than {MAX_NESTING} levels")
            stack.append(iter(item))
        elif not isinstance(item, str):
            raise RequestError(400, f"data element {len(out)}: expected a string (an image in base64), got {type(item).__name__}")
        elif len(out) == n:
            raise RequestError(400, f"data holds more than the {n} elements its shape says")
        else:
            out.append(item.encode("utf-8", "surrogatepass"))
    if len(out) != n:
        raise RequestError(400, f"data holds {len(out)} elements; the shape says {n}")
    return out


def element(raw: bytes) -> bytes:
    """An element's image: its base64 decoded, or the element itself (image files are never valid base64)."""
    compact = raw.translate(None, b" \t\r\n")
    if compact and len(compact) % 4 == 0:
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            pass
    return raw


def tensors(results: list[dict], classes: list[str]) -> dict[str, np.ndarray]:
    probs = np.zeros((len(results), len(classes)), np.float32)
    for i, r in enumerate(results):
        for t in r["top_k"]:
            probs[i, t["index"]] = t["confidence"]
    return {
        "probabilities": probs,
        "label": np.array(["" if r.get("label") is None else str(r["label"]) for r in results], dtype=object),
        "confidence": np.array([np.nan if r.get("confidence") is None else r["confidence"] for r in results], np.float32),
        "needs_review": np.array([bool(r.get("needs_review")) for r in results], np.bool_),
        "unknown": np.array([bool(r.get("unknown")) for r in results], np.bool_),  # "none of these": its label is ""
    }


def classification(probs: np.ndarray, classes: list[str], k: int) -> np.ndarray:
    """Triton's classification extension: per row the top k as 'probability:index:label', most likely first."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = [[f"{p[j]:f}:{j}:{classes[j]}" for j in idx] for p, idx in zip(probs, top)]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def serialize(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        encoded = [str(x).encode() for x in arr.ravel()]
        return b"".join(len(b).to_bytes(4, "little") + b for b in encoded)
    if datatype == "BOOL":
        return arr.astype(np.bool_).tobytes()
    return arr.astype("<f4").tobytes()


def encode_answer(req: schemas.InferRequest, results: list[dict], s: Served) -> Response:
    """The V2 answer: outputs as asked (all of them by default), each as JSON data or binary after the JSON."""
    arrays = tensors(results, s.classes)
    default_binary = bool(req.parameters and req.parameters.binary_data_output)
    wanted = req.outputs or [schemas.RequestedOutput(name=n) for n in schemas.OUTPUT_NAMES]
    outputs, tail = [], []
    for o in wanted:
        p = o.parameters
        arr, datatype = arrays[o.name], DATATYPES[o.name]
        if p is not None and p.classification:
            arr, datatype = classification(arr, s.classes, p.classification), "BYTES"
        binary = default_binary if p is None or p.binary_data is None else p.binary_data
        tensor = {"name": o.name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = serialize(arr, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            tensor["data"] = arr.ravel().tolist()
        outputs.append(tensor)
    answer = {"model_name": s.name, "model_version": "1", "outputs": outputs}
    if req.id is not None:
        answer["id"] = req.id
    head = json.dumps(answer).encode()
    if not tail:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(tail), media_type="application/octet-stream", headers={HEADER: str(len(head))})
