"""Every bad request gets an OpenAI-shaped error with the right status, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ..support.servers import MODEL_ID, ServerProcess

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


def assert_still_serving(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def post(server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": MODEL_ID}, "messages", "missing"),
        ({**CHAT, "messages": []}, "messages", ""),
        ({**CHAT, "temperature": 5}, "temperature", "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens", "max_tokens"),
        ({**CHAT, "n": 2}, "n", "n=1"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", ""),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({**CHAT, "top_logprobs": 3}, None, "top_logprobs needs logprobs"),
        ({**CHAT, "logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
        ({**CHAT, "logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
        ({**CHAT, "stop": ["a", ""]}, "stop", "empty"),
        (
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            None,
            "image_url",
        ),
    ],
)
def test_invalid_chat_fields_are_400(
    server: ServerProcess, body: dict[str, Any], param: str | None, fragment: str
) -> None:
    error = assert_openai_error(post(server, "/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert fragment in error["message"]
    assert_still_serving(server)


def test_malformed_json_is_400(server: ServerProcess) -> None:
    response = post(server, "/v1/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
    error = assert_openai_error(response, 400)
    assert "JSON" in error["message"]
    assert_still_serving(server)


def test_non_object_body_is_400(server: ServerProcess) -> None:
    response = post(server, "/v1/chat/completions", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)


def test_completions_refuse_several_prompts_and_echo(server: ServerProcess) -> None:
    several = post(server, "/v1/completions", json={"model": MODEL_ID, "prompt": ["a", "b"]})
    assert "one prompt" in assert_openai_error(several, 400)["message"]
    echo = post(server, "/v1/completions", json={"model": MODEL_ID, "prompt": "a", "echo": True})
    assert "echo" in assert_openai_error(echo, 400)["message"]


def test_unknown_model_is_404(server: ServerProcess) -> None:
    error = assert_openai_error(
        post(server, "/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404, "model_not_found"
    )
    assert "gpt-9" in error["message"] and MODEL_ID in error["message"]
    assert error["param"] == "model"
    assert_still_serving(server)


def test_prompt_longer_than_context_is_400_with_both_numbers(server: ServerProcess) -> None:
    long_text = "word " * 5000  # the test server's CONTEXT_SIZE is 2048 tokens
    body = {**CHAT, "messages": [{"role": "user", "content": long_text}]}
    error = assert_openai_error(post(server, "/v1/chat/completions", json=body), 400, "context_length_exceeded")
    assert "2048" in error["message"]
    numbers = [int(w) for w in error["message"].replace(",", " ").split() if w.isdigit()]
    assert any(n > 2048 for n in numbers), error["message"]
    assert_still_serving(server)


def test_body_over_the_limit_is_413(server: ServerProcess) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}  # MAX_BODY_BYTES=65536 here
    assert_openai_error(post(server, "/v1/chat/completions", json=big), 413, "request_too_large")
    assert_still_serving(server)


def test_chunked_body_over_the_limit_is_413(server: ServerProcess) -> None:
    payload = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()

    def chunks() -> Any:
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    response = post(server, "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413)
    assert_still_serving(server)


def test_unknown_route_and_wrong_method(server: ServerProcess) -> None:
    assert_openai_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_dropped_streaming_client_frees_its_sequence(server: ServerProcess) -> None:
    body = {**CHAT, "max_tokens": 1500, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # The connection is closed mid-stream; the server must stop generating for it.
    wait_idle(server)
    assert_still_serving(server)


def test_dropped_non_streaming_client_frees_its_sequence(server: ServerProcess) -> None:
    body = {**CHAT, "max_tokens": 1500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=1.0)
    wait_idle(server)
    assert_still_serving(server)


def wait_idle(server: ServerProcess, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/health").json()
        if health["active"] == 0 and health["queued"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server still works for a client that left: {health}")
