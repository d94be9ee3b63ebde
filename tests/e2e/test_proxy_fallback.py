"""Fallback policy end to end: a real proxy process in front of misbehaving upstreams and the real
model server on the embedded model (the healthy last tier)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ..support.proxy import FakeUpstream, Rig, chat, closed_port_url, health, start_proxy, upstream
from ..support.servers import MODEL_ID, ServerProcess

CLIENT_KEY = "proxy-client-key"
UPSTREAM_SECRET = "sk-upstream-secret-7f3a9c"  # what the proxy holds for the 'e401' upstream


@pytest.fixture(scope="module")
def rig(start_server: Any, server: ServerProcess) -> Iterator[Rig]:
    fakes = {
        "hang": FakeUpstream("hang", name="hang"),
        "e500": FakeUpstream("500", name="e500"),
        "e429": FakeUpstream("429", name="e429", retry_after="30"),
        "e429-alone": FakeUpstream("429", name="e429-alone", retry_after="30"),
        "e401": FakeUpstream("401", name="e401"),
        "e400": FakeUpstream("400", name="e400"),
        "spare": FakeUpstream("ok", name="spare"),
    }
    model = upstream("model", server.url + "/v1", model=MODEL_ID, first_byte_timeout=60, total_timeout=120)
    ups = [
        model,
        upstream("refused", closed_port_url()),
        upstream("hang", fakes["hang"].url, first_byte_timeout=0.5),
        upstream("e500", fakes["e500"].url),
        upstream("e429", fakes["e429"].url),
        upstream("e429-alone", fakes["e429-alone"].url),
        upstream("e401", fakes["e401"].url, api_key_env="E401_KEY"),
        upstream("e400", fakes["e400"].url),
        upstream("spare", fakes["spare"].url),
    ]
    aliases = {name: [name, "model"] for name in ("refused", "hang", "e500", "e401", "e400")}
    aliases["e429"] = ["e429", "spare"]  # a canned answer is enough here; generation only costs time
    aliases |= {"model": ["model"], "all-fail": ["refused", "e500", "hang"], "e429-alone": ["e429-alone"]}
    proxy = start_proxy(
        start_server,
        {"upstreams": ups, "aliases": aliases},
        API_KEYS=CLIENT_KEY,
        E401_KEY=UPSTREAM_SECRET,
        LOG_LEVEL="debug",  # the most the log ever says, still without keys
    )
    yield Rig(proxy, fakes)
    for fake in fakes.values():
        fake.stop()


def log_lines(proxy: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in proxy.log().splitlines():
        if "spaceserve.access" in line:
            lines.append(json.loads(line[line.index("{") :]))
    return lines


@pytest.mark.parametrize(
    ("alias", "code"),
    [
        ("refused", "refused:connect_error"),
        ("hang", "hang:first_byte_timeout"),
        ("e500", "e500:http_500"),
    ],
)
def test_failure_falls_back_to_the_next_upstream(rig: Rig, alias: str, code: str) -> None:
    before = health(rig.proxy)[alias]["counters"]["failures"]
    response = chat(rig.proxy, alias, key=CLIENT_KEY, temperature=0)
    assert response.status_code == 200, response.text
    assert response.headers["x-upstream"] == "model"
    assert response.json()["choices"][0]["message"]["content"]
    assert health(rig.proxy)[alias]["counters"]["failures"] == before + 1
    if alias in rig.fakes:
        assert rig.fakes[alias].completions(), "the failing upstream was tried first"
    line = next(line for line in reversed(log_lines(rig.proxy)) if line["model"] == alias)
    assert line["upstream"] == "model"
    assert code in line["upstream_failures"]


def test_the_proxy_sends_its_upstream_key_not_the_clients(rig: Rig) -> None:
    chat(rig.proxy, "e500", key=CLIENT_KEY)
    sent = rig.fakes["e500"].completions()[-1].headers
    assert "authorization" not in sent  # no api_key_env: no key at all
    assert sent["content-type"] == "application/json"


def test_429_falls_back_and_retry_after_keeps_the_upstream_out(rig: Rig) -> None:
    fake = rig.fakes["e429"]
    first = chat(rig.proxy, "e429", key=CLIENT_KEY)
    assert first.status_code == 200 and first.headers["x-upstream"] == "spare"
    assert len(fake.completions()) == 1
    second = chat(rig.proxy, "e429", key=CLIENT_KEY)
    assert second.status_code == 200 and second.headers["x-upstream"] == "spare"
    assert len(fake.completions()) == 1, "an upstream that asked for 30 s of peace was called again"
    row = health(rig.proxy)["e429"]
    assert row["state"] == "retry-after"
    assert row["retry_after_until"] is not None
    assert row["counters"]["skipped"] >= 1


def test_client_error_is_returned_unchanged_without_fallback(rig: Rig) -> None:
    served_by_model = health(rig.proxy)["model"]["counters"]["attempts"]
    response = chat(rig.proxy, "e400", key=CLIENT_KEY)
    assert response.status_code == 400
    assert response.headers["x-upstream"] == "e400"
    assert response.json() == {
        "error": {
            "message": "messages: too long for this upstream",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert health(rig.proxy)["model"]["counters"]["attempts"] == served_by_model


def test_upstream_401_is_relayed_without_its_key_anywhere(rig: Rig) -> None:
    served_by_model = health(rig.proxy)["model"]["counters"]["attempts"]
    response = chat(rig.proxy, "e401", key=CLIENT_KEY)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["message"] == "Incorrect API key provided: <upstream key>"
    assert health(rig.proxy)["model"]["counters"]["attempts"] == served_by_model
    # The upstream did receive the key, so the scrubbing above is not vacuous.
    assert rig.fakes["e401"].completions()[-1].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert UPSTREAM_SECRET not in response.text
    assert UPSTREAM_SECRET not in rig.proxy.log()
    assert CLIENT_KEY not in rig.proxy.log()


def test_every_upstream_failed_gives_502_listing_each(rig: Rig) -> None:
    response = chat(rig.proxy, "all-fail", key=CLIENT_KEY)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "all_upstreams_failed"
    message = error["message"]
    assert message.startswith("every upstream failed for model 'all-fail': ")
    assert "refused: connection failed" in message
    assert "e500: HTTP 500: the upstream fell over" in message
    assert "hang: no response within 0.5s (first_byte_timeout)" in message


def test_all_upstreams_skipped_gives_503_with_retry_after(rig: Rig) -> None:
    first = chat(rig.proxy, "e429-alone", key=CLIENT_KEY)
    assert first.status_code == 502
    assert "e429-alone: HTTP 429 (Retry-After 30s): slow down" in first.json()["error"]["message"]
    second = chat(rig.proxy, "e429-alone", key=CLIENT_KEY)
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "no_upstream_available"
    assert "e429-alone: skipped: asked to retry after another" in second.json()["error"]["message"]
    assert 1 <= int(second.headers["retry-after"]) <= 30
    assert len(rig.fakes["e429-alone"].completions()) == 1


def test_proxy_checks_its_own_clients_keys(rig: Rig) -> None:
    response = chat(rig.proxy, "model")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert chat(rig.proxy, "model", key="wrong").status_code == 401


def test_unknown_model_is_404_naming_the_aliases(rig: Rig) -> None:
    response = chat(rig.proxy, "gpt-5", key=CLIENT_KEY)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "'all-fail'" in response.json()["error"]["message"]


def test_bad_request_body_is_400_before_any_upstream(rig: Rig) -> None:
    response = httpx.post(
        rig.proxy.url + "/v1/chat/completions",
        json={"model": "model", "messages": []},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_openai_client_through_the_proxy(rig: Rig, server: ServerProcess) -> None:
    client = rig.proxy.client(CLIENT_KEY)
    assert {model.id for model in client.models.list()} == {
        "refused", "hang", "e500", "e401", "e400", "e429", "model", "all-fail", "e429-alone",
    }  # fmt: skip
    question = [{"role": "user", "content": "What is the capital of France?"}]
    direct = server.client().chat.completions.create(model=MODEL_ID, messages=question, max_tokens=8, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model="refused", messages=question, max_tokens=8, temperature=0
    )
    via_proxy = raw.parse()
    assert raw.headers["x-upstream"] == "model"
    assert via_proxy.choices[0].message.content == direct.choices[0].message.content
    assert via_proxy.usage is not None and via_proxy.usage.completion_tokens == 8
    text = client.completions.create(model="e500", prompt="1, 2, 3, 4,", max_tokens=4, temperature=0)
    assert text.choices[0].text.strip()


def test_health_lists_every_upstream(rig: Rig) -> None:
    body = httpx.get(rig.proxy.url + "/health").json()
    # Earlier tests here leave the 429 upstreams waiting out their Retry-After: degraded, not down.
    unwell = [row["name"] for row in body["upstreams"] if row["state"] != "healthy"]
    assert body["status"] == ("degraded" if unwell else "ok")
    assert all(name in body["reason"] for name in unwell)
    names = [row["name"] for row in body["upstreams"]]
    assert names[:3] == ["model", "refused", "hang"]
    row = body["upstreams"][0]
    assert set(row) >= {"state", "cooling_until", "recent_failures", "in_flight", "counters", "last_error"}
    assert body["aliases"]["all-fail"] == ["refused", "e500", "hang"]
