"""The service's request and response shapes, declared so that /openapi.json describes every route.

/v1/predict reads its body itself (with the byte cap of limits.py), so its two request bodies are written
out here as OpenAPI (`predict_request_body`) rather than inferred by FastAPI from a parameter. The same
holds for the Open Inference Protocol's (V2) infer route: its JSON header is `InferRequest`, validated
strictly by protocols.py, and `infer_request_body` writes it out inline.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_serializer


class Error(BaseModel):
    """Every refusal and failure: 4xx for the client's request, 5xx for the server."""

    error: str = Field(description="one line: what was wrong and what to do")


class Health(BaseModel):
    status: str = Field(description='"ok" once the model is loaded')
    model: str
    backend: str = Field(description="torch or onnx")


class ModelInfo(BaseModel):
    name: str
    backend: str
    classes: list[str]
    input: dict[str, Any] | None = Field(description="what the model takes: kind and size")
    metrics: dict[str, Any] = Field(description="test and validation accuracy, parameters, speed, where recorded")
    calibration: dict[str, Any] | None = Field(description="temperature and review rule (threshold, promise, calibration items)")
    promise: str = Field(description="the review rule in words: what automatic labels are guaranteed to be")
    ready: dict[str, Any] | None = Field(
        None,
        description="the ready model only (no run folder given): its members, asked together on every photo, and the "
        "review rule they answer under, fitted on photos (it replaces `calibration`'s threshold); null for one run",
    )


class Ranked(BaseModel):
    label: str
    index: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str | None = Field(description='the most likely class; null when the image is none of the classes ("unknown")')
    index: int = Field(ge=0, description="its position in /v1/models' classes (of the most likely class, also when unknown)")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of the most likely class")
    top_k: list[Ranked] = Field(description="the k most likely classes, most likely first")
    needs_review: bool = Field(description="confidence below the run's review threshold, or unknown: a person should check")
    unknown: bool = Field(False, description="none of the run's classes: the out-of-distribution score or a negative class said so")
    unknown_score: float | None = Field(None, description="the out-of-distribution score (higher: less like the classes); null without one")
    audit: bool = Field(
        False,
        description="the rule would label it with no person, but it was drawn at random (serve --audit-share) for a "
        "person's check: send it to one as any flagged photo; their verdicts measure the automatic labels' precision",
    )
    preprocessed_png_b64: str | None = Field(None, description="with ?preprocessed=true: the image the model saw, base64 PNG")

    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler):
        """label and unknown_score are written when null too (the routes leave other null fields out)."""
        out = handler(self)
        return {"label": self.label, **out, "unknown_score": self.unknown_score} if isinstance(out, dict) else out


class Predictions(BaseModel):
    predictions: list[Prediction] = Field(description="one per image, in input order")


def top_k_query(n_classes: int):
    return Query(3, ge=1, le=n_classes, description="how many classes to rank")


def preprocessed_query():
    return Query(False, description="add the image the model saw, as base64 PNG")


def model_name_path(name: str):
    """The {name} of the protocol routes: declared as the one model served; any other name is a 404."""
    return Path(description="the model's name (GET /v1/models: name)", json_schema_extra={"enum": [name]})


def predict_request_body(max_files: int) -> dict:
    """openapi_extra for /v1/predict: multipart `file` fields, or KServe V1 JSON instances."""
    instances = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_files,
                "items": {
                    "type": "object",
                    "required": ["b64"],
                    "properties": {"b64": {"type": "string", "format": "byte", "description": "an image file, base64"}},
                },
            }
        },
    }
    multipart = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_files,
                "items": {"type": "string", "format": "binary"},
                "description": "image files (JPEG, PNG, WebP, BMP, GIF, TIFF), recognised by content",
            }
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": instances},
            },
        }
    }


ERRORS = {
    400: "malformed request: empty body or file, no 'file' field, bad JSON or base64",
    401: "missing or wrong API key (only when the server has one)",
    404: "no model of that name on this server",
    408: "the request body did not arrive within --timeout-s",
    413: "body, image count or pixels above the limits (--max-body-mb, --max-files, --max-pixels-per-*)",
    415: "content that is not an image this service reads",
    422: "damaged image data, or a query parameter out of range",
    503: "queue full or too many bodies held in memory; retry after Retry-After seconds",
    504: "no answer within --timeout-s",
}


# The V2 infer route's own wording where it differs.
V2_ERRORS = {
    400: "malformed request: not the protocol's request shape (see the schema), bad JSON, base64 or binary tensor data",
    415: "content that is not an image this service reads, or a compressed (Content-Encoding) request body",
}


def error_responses(*codes: int, wording: dict[int, str] | None = None) -> dict:
    return {c: {"model": Error, "description": (wording or {}).get(c, ERRORS[c])} for c in codes}


# KServe V1 and the Open Inference Protocol (V2, KServe v2 / Triton HTTP): shapes of protocols.py's routes.


class ModelReady(BaseModel):
    name: str
    ready: bool = Field(description="true once the model is loaded (it is, whenever the server answers)")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions: binary_tensor_data, classification")


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BYTES, FP32 or BOOL")
    shape: list[int] = Field(description="-1: any size (the batch)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="pytorch or onnxruntime_onnx: what answers")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


OUTPUT_NAMES = ("probabilities", "label", "confidence", "needs_review", "unknown")


class _Strict(BaseModel):
    """Types as declared, nothing coerced: a request the schema calls invalid is refused, never half-read."""

    model_config = ConfigDict(strict=True)


class InputParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data_size: int | None = Field(
        None, ge=0, description="binary tensor extension: this input's bytes follow the JSON header (Inference-Header-Content-Length)"
    )


class InferInput(_Strict):
    name: Literal["image"]
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=8, description="[n] for n images; [n, 1] (trailing ones) as Triton clients send BYTES"
    )
    datatype: Literal["BYTES"]
    parameters: InputParameters | None = None
    data: list[str | list[Any]] | None = Field(
        None, description="n strings, flat or nested by shape: each an image file's bytes in base64 (or as a raw string)"
    )


class OutputParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data: bool | None = Field(None, description="answer this output as binary data after the JSON header")
    classification: int | None = Field(None, ge=1, description="probabilities only: the top k as 'probability:index:label'")


class RequestedOutput(_Strict):
    name: Literal["probabilities", "label", "confidence", "needs_review", "unknown"]
    parameters: OutputParameters | None = None


class RequestParameters(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    binary_data_output: bool | None = Field(None, description="every output as binary data, unless it says otherwise")


class InferRequest(_Strict):
    id: str | None = Field(None, description="echoed in the answer")
    parameters: RequestParameters | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1, description="one input, 'image'")
    outputs: list[RequestedOutput] | None = Field(
        None, min_length=1, max_length=len(OUTPUT_NAMES), description="default: all of them, in order"
    )


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the data follows the JSON header")
    data: list[float | bool | str] | None = Field(None, description="row-major, flat")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs written in place (an openapi_extra body cannot refer to them)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def infer_request_body() -> dict:
    """openapi_extra for POST /v2/models/{name}/infer: the JSON request, or the binary tensor extension."""
    binary = {
        "type": "string",
        "format": "binary",
        "description": "the JSON request (Inference-Header-Content-Length bytes), then each input's binary_data_size bytes: "
        "per image a 4-byte little-endian length and the image file",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(InferRequest)}, "application/octet-stream": {"schema": binary}},
        }
    }


INFER_BINARY = {
    "description": "the answer, JSON; with binary outputs, application/octet-stream: the JSON answer "
    "(Inference-Header-Content-Length bytes), then each binary output's bytes",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
