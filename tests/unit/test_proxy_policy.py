"""Which upstream error bodies the proxy reads as "too long for this upstream's context": real
shapes from each kind of server, and genuine client errors that must not be mistaken for one."""

from __future__ import annotations

import json

import pytest

from spaceserve.proxy.relay import _openai_error, is_context_overflow, is_unknown_model

TOO_LONG = {
    "openai": {
        "error": {
            "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in "
            "9000 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "openai code only": {
        "error": {"message": "Too long.", "type": "invalid_request_error", "code": "context_length_exceeded"}
    },
    "this model server": {
        "error": {
            "message": "this model's maximum context length is 2048 tokens, but the messages take 3001 tokens; "
            "shorten them",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "llama-server": {
        "error": {
            "code": 400,
            "message": "request (9412 tokens) exceeds the available context size (8192 tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 9412,
            "n_ctx": 8192,
        }
    },
    "llama-server, older": {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "invalid_request_error",
        }
    },
    "vllm": {
        "object": "error",
        "message": "This model's maximum context length is 4096 tokens. However, you requested 4472 tokens "
        "(376 in the messages, 4096 in the completion). Please reduce the length of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    },
    "sglang": {
        "error": {"message": "The input (5000 tokens) is longer than the model's context length (4096 tokens)."}
    },
    "tgi / hf router": {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` "
        "tokens and 512 `max_new_tokens`",
        "error_type": "validation",
    },
    "tgi, prompt alone": {
        "error": "Input validation error: `inputs` must have less than 2048 tokens. Given: 3000",
        "error_type": "validation",
    },
}

GENUINE = {
    "bad temperature": {
        "error": {"message": "'temperature': 3.5 is greater than the maximum of 2", "type": "invalid_request_error"}
    },
    "empty messages": {"error": {"message": "messages: must not be empty", "param": "messages", "code": None}},
    "tgi validation": {
        "error": "Input validation error: `temperature` must be strictly positive",
        "error_type": "validation",
    },
    "vague": {"error": {"message": "messages: too long for this upstream"}},
    "not json": "Bad Request",
}


@pytest.mark.parametrize("name", list(TOO_LONG))
def test_too_long_answers_are_recognised(name: str) -> None:
    assert is_context_overflow(_openai_error(400, json.dumps(TOO_LONG[name])))


@pytest.mark.parametrize("name", list(GENUINE))
def test_genuine_client_errors_are_not(name: str) -> None:
    body = GENUINE[name]
    assert not is_context_overflow(_openai_error(400, body if isinstance(body, str) else json.dumps(body)))


def test_a_400_naming_an_unknown_model_is_told_from_other_400s() -> None:
    hf_router = {"error": "The requested model 'x/y' is not supported by any provider you have enabled."}
    coded = {"error": {"message": "The requested model is not supported.", "code": "model_not_supported"}}
    for body in (hf_router, coded):
        assert is_unknown_model(_openai_error(400, json.dumps(body)))
    for body in GENUINE.values():
        assert not is_unknown_model(_openai_error(400, body if isinstance(body, str) else json.dumps(body)))
