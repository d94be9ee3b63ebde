"""Schemathesis hooks for ``make fuzz`` (loaded through ``SCHEMATHESIS_HOOKS=loadtests.fuzz_hooks``).

- Generated bodies keep ``max_tokens`` small, so that thousands of cases finish in minutes on a
  CPU, and most of them name the served model (``FUZZ_MODEL``), so that they get past the model
  check into prompt building, sampling and generation.
- ``openai_error_body``: every 4xx/5xx answer must be an OpenAI error object.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import schemathesis

MAX_TOKENS = int(os.environ.get("FUZZ_MAX_TOKENS", "4"))
ERROR_FIELDS = {"message", "type", "param", "code"}


@schemathesis.hook
def map_body(_ctx: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    model = os.environ.get("FUZZ_MODEL")
    # Three cases in four use the real model; the rest keep the generated name (404 model_not_found).
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()
    if model and "model" in body and digest[0] % 4:
        body["model"] = model
    return body


@schemathesis.check
def openai_error_body(_ctx: Any, response: Any, _case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"HTTP {response.status_code} without a JSON body: {response.content[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != ERROR_FIELDS or set(body) != {"error"}:
        raise AssertionError(f"HTTP {response.status_code} body is not an OpenAI error object: {body!r:.300}")
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        raise AssertionError(f"HTTP {response.status_code} error without message or type: {error!r:.300}")
    return True
