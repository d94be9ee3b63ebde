"""CORS on the model server and the proxy, over raw HTTP: preflights answered before the key check
and the rate limit, the headers on successes and on every error a page must be able to read."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from spaceserve.base.auth import fingerprint
from spaceserve.settings import CommonSettings, SettingsError, load_settings

from ..support.proxy import FakeUpstream, start_proxy, upstream
from ..support.servers import MODEL_ID, ServerProcess
from .test_errors import assert_openai_error

APP = "https://app.example"
KEY = "sk-cors-main"
LIMITED_KEY = "sk-cors-limited"  # two requests per minute
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
# What a browser sends before the OpenAI JS SDK's or a fetch() call with a key.
REQUESTED_HEADERS = "authorization, content-type, x-api-key, x-stainless-os"


@pytest.fixture(scope="module")
def cors_server(start_server: Callable[..., ServerProcess], model_path: Path) -> ServerProcess:
    return start_server(
        MODEL_SOURCE=str(model_path),
        API_KEYS=f"{KEY},{LIMITED_KEY}",
        RATE_LIMIT_OVERRIDES=json.dumps({fingerprint(LIMITED_KEY): {"rpm": 2}}),
        CORS_ALLOW_ORIGINS=f"{APP}, http://localhost:3000",
        MAX_BODY_BYTES="65536",
        CONTEXT_SIZE="1024",
        PARALLEL_SLOTS="2",
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream_server = FakeUpstream("ok", name="good")
    yield upstream_server
    upstream_server.stop()


@pytest.fixture(scope="module")
def cors_proxy(start_server: Callable[..., ServerProcess], fake: FakeUpstream) -> ServerProcess:
    # The proxy template's settings.env allows every origin.
    return start_proxy(start_server, {"upstreams": [upstream("good", fake.url)]}, API_KEYS=KEY)


def preflight(server: ServerProcess, origin: str, method: str = "POST", path: str = "/v1/chat/completions"):  # type: ignore[no-untyped-def]
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": REQUESTED_HEADERS,
    }
    return httpx.options(server.url + path, headers=headers, timeout=10)


def post(server: ServerProcess, key: str | None, body: object = CHAT, origin: str = APP) -> httpx.Response:
    headers = {"Origin": origin, **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def exposed(response: httpx.Response) -> set[str]:
    return {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/models"])
def test_preflight_is_answered_without_a_key(cors_server: ServerProcess, path: str) -> None:
    method = "GET" if path == "/v1/models" else "POST"
    answer = preflight(cors_server, APP, method, path)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP
    assert method in answer.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key"} <= allowed
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "Origin" in answer.headers["vary"]
    assert "access-control-allow-credentials" not in answer.headers


def test_preflight_is_not_counted_by_the_rate_limit(cors_server: ServerProcess) -> None:
    for _ in range(5):
        assert preflight(cors_server, APP).status_code == 200
    assert post(cors_server, LIMITED_KEY).status_code == 200
    assert post(cors_server, LIMITED_KEY).status_code == 200
    refused = post(cors_server, LIMITED_KEY)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["access-control-allow-origin"] == APP
    assert {"retry-after", "x-ratelimit-remaining-requests"} <= exposed(refused)
    assert refused.headers["retry-after"]


def test_other_origins_and_methods_are_refused(cors_server: ServerProcess) -> None:
    other = preflight(cors_server, "https://elsewhere.example")
    body = assert_openai_error(other, 403, "cors_not_allowed")
    assert "https://elsewhere.example" in body["message"] and "CORS_ALLOW_ORIGINS" in body["message"]
    assert "access-control-allow-origin" not in other.headers
    assert_openai_error(preflight(cors_server, APP, method="DELETE"), 403, "cors_not_allowed")
    # An actual request from another origin is served (a browser then hides the answer from the page).
    served = post(cors_server, KEY, origin="https://elsewhere.example")
    assert served.status_code == 200 and "access-control-allow-origin" not in served.headers


def test_answers_carry_the_headers_and_expose_every_x_header(cors_server: ServerProcess) -> None:
    ok = post(cors_server, KEY, origin="http://localhost:3000")
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    sent = {name.lower() for name in ok.headers if name.lower().startswith("x-")}
    assert "x-request-id" in sent and "x-time-to-first-token-ms" in sent
    assert sent <= exposed(ok)
    stream = post(cors_server, KEY, {**CHAT, "stream": True})
    assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == APP
    assert "data: [DONE]" in stream.text


@pytest.mark.parametrize(
    ("key", "body", "status", "code"),
    [
        (None, CHAT, 401, "invalid_api_key"),
        ("sk-wrong", CHAT, 401, "invalid_api_key"),
        (KEY, {**CHAT, "model": "no-such-model"}, 404, "model_not_found"),
        (KEY, {**CHAT, "max_tokens": -1}, 400, None),
        (KEY, {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}, 413, "request_too_large"),
    ],
)
def test_errors_carry_the_headers(
    cors_server: ServerProcess, key: str | None, body: object, status: int, code: str | None
) -> None:
    refused = post(cors_server, key, body)
    assert refused.status_code == status, refused.text
    assert refused.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in exposed(refused)
    if code:
        assert_openai_error(refused, status, code)


def test_without_the_setting_there_is_no_cors(server: ServerProcess) -> None:
    answer = preflight(server, APP)
    assert answer.status_code == 405
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in post(server, None).headers


def test_the_proxy_template_allows_every_origin(cors_proxy: ServerProcess) -> None:
    answer = preflight(cors_proxy, "https://someone.hf.space")
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    ok = post(cors_proxy, KEY, {**CHAT, "model": "good"}, origin="https://someone.hf.space")
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "*"
    assert "x-upstream" in exposed(ok) and ok.headers["x-upstream"] == "good"
    refused = post(cors_proxy, None, {**CHAT, "model": "good"}, origin="https://someone.hf.space")
    assert_openai_error(refused, 401, "invalid_api_key")
    assert refused.headers["access-control-allow-origin"] == "*"


def test_origins_setting_explains_mistakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://A.example, *")
    assert load_settings(CommonSettings).cors_allow_origins == ["https://a.example", "*"]
    for bad, words in [
        ("https://app.example/", "has a path"),
        ("https://app.example/page", "https://app.example"),
        ("app.example", "not an origin"),
    ]:
        monkeypatch.setenv("CORS_ALLOW_ORIGINS", bad)
        with pytest.raises(SettingsError) as info:
            load_settings(CommonSettings)
        assert "CORS_ALLOW_ORIGINS" in str(info.value) and words in str(info.value)
