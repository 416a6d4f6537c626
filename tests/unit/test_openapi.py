"""The front door's OpenAPI document: a valid OpenAPI 3.1 document (schemathesis loads
it, as the fuzzing e2e does) whose request bodies are vLLM's models and whose errors
have the one OpenAI shape the front door answers with."""

from __future__ import annotations

import jsonschema
import schemathesis
from modelfleet_serving.errors import bad_request
from modelfleet_serving.openapi import ERROR_SCHEMA, openapi_document


def test_every_operation_loads_with_its_body() -> None:
    document = openapi_document()
    schema = schemathesis.openapi.from_dict(document)
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert operations == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/metrics"),
    }
    components = document["components"]["schemas"]
    for path, ref in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
    ):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{ref}"}
        assert {"model", "max_tokens", "stream"} <= set(components[ref]["properties"])
    assert set(components["ChatCompletionRequest"]["required"]) >= {"model", "messages"}
    assert set(components["CompletionRequest"]["required"]) >= {"model", "prompt"}


def test_the_error_schema_is_what_the_front_door_sends() -> None:
    body = bad_request("Malformed JSON body: x", code="invalid_json").body()
    jsonschema.validate(body, ERROR_SCHEMA)
