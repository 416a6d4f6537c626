"""The OpenAPI document of the front door: what `GET /openapi.json` answers.

The front door relays request bodies to the replicas without parsing them into vLLM's
models (it does not import vLLM), so FastAPI cannot describe them. The bodies'
schemas come from vLLM's own pydantic request models instead, written to
`data/openai_requests.json` by `make generate`; this module puts them into one
OpenAPI 3.1 document with the other endpoints and the error shape every failure has.
Fuzzers (schemathesis, in the tests) and client generators read it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

REQUESTS_FILE = Path(__file__).parent / "data" / "openai_requests.json"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_ERROR = {
    "description": "An OpenAI-shaped error: 400 for a bad body, 401 for a missing or wrong "
    "API key, 404 for an unknown model or path, 429 when the queue is full, 503 when "
    "no replica can take the request, 504 past the request timeout.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
# Without API keys configured the endpoints take anonymous requests too.
_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {}]


def _generation(name: str, summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": name,
            "summary": summary,
            "security": _SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {
                    "description": "The answer; with `stream: true` a stream of server-sent "
                    "events ending in `data: [DONE]`, an error event if it fails midway.",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "default": _ERROR,
            },
        }
    }


def _get(name: str, summary: str, media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": name,
            "summary": summary,
            "responses": {
                "200": {"description": summary, "content": {media_type: {"schema": schema}}},
                "default": _ERROR,
            },
        }
    }


# Fields vLLM's models leave optional (its server falls back to the one model it has,
# and takes prompt embeddings instead of a prompt) that this API requires, as OpenAI's
# does: validation.py refuses a body without them.
REQUIRED_HERE = {"ChatCompletionRequest": ("model",), "CompletionRequest": ("model", "prompt")}


def _not_null(schema: dict[str, Any]) -> None:
    """Drop the `null` choice (pydantic's `X | None`) from a property's schema."""
    choices = schema.get("anyOf")
    if choices is not None:
        schema["anyOf"] = [c for c in choices if c.get("type") != "null"]
        schema.pop("default", None)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (read once; the request schemas do not change while serving)."""
    requests = json.loads(REQUESTS_FILE.read_text())
    for name, fields in REQUIRED_HERE.items():
        body = requests["schemas"][name]
        body["required"] = sorted({*body.get("required", ()), *fields})
        for field in fields:
            _not_null(body["properties"][field])
    model = "The served model, or one of its LoRA adapters (see GET /v1/models)."
    for name in REQUIRED_HERE:
        requests["schemas"][name]["properties"]["model"] = {
            "type": "string",
            "minLength": 1,
            "description": model,
        }
    models = _get(
        "listModels",
        "The served model and the LoRA adapters running replicas serve",
        "application/json",
        {"type": "object", "required": ["object", "data"]},
    )
    models["get"]["security"] = _SECURITY
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelfleet OpenAI-compatible API",
            "version": "v1",
            "description": "Request bodies as vLLM's server accepts them "
            f"({requests['generated'].removeprefix('by `make generate` from ')}).",
        },
        "paths": {
            "/v1/chat/completions": _generation(
                "createChatCompletion", "OpenAI chat completions", requests["chat"]
            ),
            "/v1/completions": _generation(
                "createCompletion", "OpenAI text completions", requests["completion"]
            ),
            "/v1/models": models,
            "/health": _get(
                "health",
                "Liveness, with what each LLM replica reports",
                "application/json",
                {"type": "object", "required": ["status", "replicas"]},
            ),
            "/metrics": _get(
                "metrics",
                "Prometheus exposition of the modelfleet_* metrics",
                "text/plain",
                {"type": "string"},
            ),
        },
        "components": {
            "schemas": {**requests["schemas"], "Error": ERROR_SCHEMA},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
