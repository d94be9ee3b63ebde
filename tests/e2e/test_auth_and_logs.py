"""API keys on every route, the Space safety default, and what the request log may and may not say."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from spaceserve.base.auth import fingerprint

from ..support.servers import MODEL_ID, ServerProcess
from .test_errors import assert_openai_error

KEY_A = "sk-test-alpha-3f9d2c"
KEY_FILE_KEY = "sk-test-from-file-77ab"
SECRET_PROMPT = "the password is swordfish-6411"

PROTECTED = [
    ("GET", "/v1/models", None),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    ),
    ("POST", "/v1/completions", {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}),
]


@pytest.fixture(scope="module")
def keyed(start_server: object, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# one key per line\n{KEY_FILE_KEY}\n")
    return start_server(  # type: ignore[operator, no-any-return]
        MODEL_SOURCE=str(model_path),
        API_KEYS=f"{KEY_A}, sk-other",
        API_KEYS_FILE=str(key_file),
        CONTEXT_SIZE="1024",
        PARALLEL_SLOTS="2",
    )


def call(server: ServerProcess, method: str, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_every_api_route_needs_a_key(keyed: ServerProcess, method: str, path: str, body: object) -> None:
    missing = assert_openai_error(call(keyed, method, path, body, {}), 401, "invalid_api_key")
    assert missing["type"] == "authentication_error"
    wrong = call(keyed, method, path, body, {"Authorization": "Bearer sk-wrong"})
    assert_openai_error(wrong, 401, "invalid_api_key")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert call(keyed, method, path, body, {"Authorization": f"Bearer {KEY_A}"}).status_code == 200
    assert call(keyed, method, path, body, {"X-API-Key": KEY_A}).status_code == 200
    assert call(keyed, method, path, body, {"Authorization": f"Bearer {KEY_FILE_KEY}"}).status_code == 200
    # A private Space: the Hub token fills Authorization, the API key rides in X-API-Key.
    both = {"Authorization": "Bearer hf_hub_token_for_the_private_space", "X-API-Key": KEY_A}
    assert call(keyed, method, path, body, both).status_code == 200


def test_health_and_root_stay_public(keyed: ServerProcess) -> None:
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/").status_code == 200


def test_openai_client_gets_authentication_error(keyed: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        keyed.client("sk-wrong").models.list()
    assert [m.id for m in keyed.client(KEY_A).models.list()] == [MODEL_ID]


def test_log_has_one_line_per_request_without_keys_or_text(keyed: ServerProcess) -> None:
    reply = keyed.client(KEY_A).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": SECRET_PROMPT}], max_tokens=6, temperature=0
    )
    completion = reply.choices[0].message.content or ""
    log = keyed.log()
    lines = [
        json.loads(line.split(" spaceserve.access ", 1)[1])
        for line in log.splitlines()
        if " spaceserve.access " in line
    ]
    mine = [
        entry
        for entry in lines
        if entry.get("key") == fingerprint(KEY_A)
        and entry.get("route") == "/v1/chat/completions"
        and entry.get("completion_tokens") == 6
    ]
    assert mine, lines
    entry = mine[-1]
    for field in ("request_id", "status", "prompt_tokens", "completion_tokens", "ttft_ms", "total_ms"):
        assert field in entry
    assert entry["status"] == 200
    assert KEY_A not in log and KEY_FILE_KEY not in log
    assert "swordfish" not in log
    assert completion.strip() and completion.strip() not in log


def test_space_without_keys_refuses_completions(start_server: object, model_path: Path) -> None:
    server: ServerProcess = start_server(
        MODEL_SOURCE=str(model_path),
        SPACE_ID="someone/some-space",  # type: ignore[operator]
        CONTEXT_SIZE="512",
        PARALLEL_SLOTS="1",
    )
    error = assert_openai_error(call(server, *PROTECTED[1], {}), 500, "auth_not_configured")
    assert "API_KEYS" in error["message"] and "ALLOW_UNAUTHENTICATED" in error["message"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert "refusing completions" in server.log()


def test_space_opt_out_serves_without_keys(start_server: object, model_path: Path) -> None:
    server: ServerProcess = start_server(
        MODEL_SOURCE=str(model_path),
        SPACE_ID="someone/some-space",  # type: ignore[operator]
        ALLOW_UNAUTHENTICATED="true",
        CONTEXT_SIZE="512",
        PARALLEL_SLOTS="1",
    )
    assert call(server, *PROTECTED[1], {}).status_code == 200
