"""The service's request and response shapes, declared so that /openapi.json describes every route.

/v1/predict reads its body itself (with the byte cap of limits.py), so its two request bodies are written
out here as OpenAPI (`predict_request_body`) rather than inferred by FastAPI from a parameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    calibration: dict[str, Any] | None = Field(description="temperature and review threshold")


class Ranked(BaseModel):
    label: str
    index: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str = Field(description="the most likely class")
    index: int = Field(ge=0, description="its position in /v1/models' classes")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of the label")
    top_k: list[Ranked] = Field(description="the k most likely classes, most likely first")
    needs_review: bool = Field(description="confidence below the run's review threshold: a person should check")
    preprocessed_png_b64: str | None = Field(None, description="with ?preprocessed=true: the image the model saw, base64 PNG")


class Predictions(BaseModel):
    predictions: list[Prediction] = Field(description="one per image, in input order")


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
    408: "the request body did not arrive within --timeout-s",
    413: "body, image count or pixels above the limits (--max-body-mb, --max-files, --max-pixels-per-*)",
    415: "content that is not an image this service reads",
    422: "damaged image data, or a query parameter out of range",
    503: "queue full or too many bodies held in memory; retry after Retry-After seconds",
    504: "no answer within --timeout-s",
}


def error_responses(*codes: int) -> dict:
    return {c: {"model": Error, "description": ERRORS[c]} for c in codes}
