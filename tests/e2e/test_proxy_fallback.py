"""Fallback policy end to end: a real proxy process in front of misbehaving upstreams and the real
model server on the embedded model (the healthy last tier, and a real too-small one)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ..support.proxy import (
    GENUINE_400,
    GENUINE_422,
    TOO_LONG,
    FakeUpstream,
    Rig,
    chat,
    closed_port_url,
    health,
    sse_data,
    start_proxy,
    upstream,
)
from ..support.servers import MODEL_ID, ServerProcess
from .test_metrics_and_limits import metric, scrape

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
        "e422": FakeUpstream("422", name="e422"),
        "e403": FakeUpstream("403", name="e403"),
        "e404": FakeUpstream("404", name="e404"),
        "e400-model": FakeUpstream("400-model", name="e400-model"),
        "spare": FakeUpstream("ok", name="spare"),
    }
    fakes |= {mode: FakeUpstream(mode, name=mode) for mode in (*TOO_LONG, "context-event")}
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
        upstream("e422", fakes["e422"].url),
        upstream("spare", fakes["spare"].url),
        *(upstream(mode, fakes[mode].url) for mode in (*TOO_LONG, "context-event")),
        # Wrong key or model (the operator's choice), each twice as each cools down at its first failure:
        # a streamed request goes to the "-s" entry, a non-streamed one to the other.
        *(
            upstream(name + suffix, fakes[name].url, api_key_env="E401_KEY", model="gpt-nope")
            for name in ("e401", "e403", "e404", "e400-model")
            for suffix in ("-s", "")
            if name + suffix != "e401"
        ),
        # No model of its own: the client's model name goes through, so a 404 is about the client's name.
        upstream("e404-client", fakes["e404"].url),
    ]
    aliases = {name: [name, "model"] for name in ("refused", "hang", "e500", "e401", "e400", "e422")}
    aliases["e429"] = ["e429", "spare"]  # a canned answer is enough here; generation only costs time
    aliases |= {"model": ["model"], "all-fail": ["refused", "e500", "hang"], "e429-alone": ["e429-alone"]}
    aliases |= {
        name: [name, "spare"]
        for name in ("e401-s", "e403", "e403-s", "e404", "e404-s", "e400-model", "e400-model-s", "e404-client")
    }
    aliases |= {mode: [mode, "spare"] for mode in (*TOO_LONG, "context-event")}
    aliases |= {
        "small-model": ["model", "spare"],  # the real model server, its context 2048 tokens
        "all-too-small": ["context-tgi", "context-llama", "context"],
        "too-small-then-down": ["context", "e500"],
        "nobody-has-it": ["e404-client"],
    }
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


def log_line(proxy: ServerProcess, response: httpx.Response) -> dict[str, Any]:
    """The request log line of ``response``; it is written as the response ends, so may lag a little."""
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in log_lines(proxy) if line["request_id"] == request_id]
        if lines or time.monotonic() > deadline:
            assert lines, f"no request log line for {request_id}"
            return lines[0]
        time.sleep(0.05)


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
    line = log_line(rig.proxy, response)
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


def post(rig: Rig, model: str, *, stream: bool, **fields: Any) -> httpx.Response:
    """A chat request through the proxy, streamed or not, read to the end."""
    if stream:
        fields["stream"] = True
    return chat(rig.proxy, model, key=CLIENT_KEY, **fields)


def served_by(response: httpx.Response, stream: bool) -> str:
    """The answer's text, checking it is a whole answer of its kind."""
    assert response.status_code == 200, response.text
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("alias", "status", "message"), [("e400", 400, GENUINE_400), ("e422", 422, GENUINE_422)])
def test_a_genuinely_bad_request_is_returned_unchanged_without_fallback(
    rig: Rig, alias: str, status: int, message: str, stream: bool
) -> None:
    served_by_model = health(rig.proxy)["model"]["counters"]["attempts"]
    response = post(rig, alias, stream=stream)
    assert response.status_code == status
    assert response.headers["x-upstream"] == alias
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    assert health(rig.proxy)["model"]["counters"]["attempts"] == served_by_model
    assert health(rig.proxy)[alias]["state"] == "healthy"


@pytest.mark.parametrize(
    ("alias", "stream"),
    [*((mode, stream) for mode in TOO_LONG for stream in (False, True)), ("context-event", True)],
)
def test_too_long_for_an_upstream_moves_on_without_cooling_it_down(rig: Rig, alias: str, stream: bool) -> None:
    before = scrape(rig.proxy, CLIENT_KEY)
    calls = len(rig.fakes[alias].completions())
    response = post(rig, alias, stream=stream)
    assert served_by(response, stream) == "ok from spare"
    assert response.headers["x-upstream"] == "spare"
    assert len(rig.fakes[alias].completions()) == calls + 1
    after = scrape(rig.proxy, CLIENT_KEY)
    failures, fallbacks = "spaceserve_proxy_failures_total", "spaceserve_proxy_fallbacks_total"
    for name, labels in (
        (failures, {"upstream": alias, "reason": "context_length"}),
        (fallbacks, {"from_upstream": alias, "to_upstream": "spare"}),
    ):
        assert metric(after, name, **labels) == metric(before, name, **labels) + 1, name
    row = health(rig.proxy)[alias]
    assert row["state"] == "healthy" and row["last_error"] is None and row["recent_failures"] == 0
    line = log_line(rig.proxy, response)
    assert line["upstream"] == "spare" and line["upstream_failures"] == f"{alias}:context_length"


def test_the_real_model_server_refusing_a_too_long_prompt_moves_on(rig: Rig) -> None:
    # Well over 2,048 tokens, the model server's context.
    long_prompt = "Here is the page to edit: " + "<p>lorem ipsum dolor</p> " * 500
    attempts = health(rig.proxy)["model"]["counters"]["attempts"]
    response = chat(rig.proxy, "small-model", key=CLIENT_KEY, messages=[{"role": "user", "content": long_prompt}])
    assert served_by(response, False) == "ok from spare"
    row = health(rig.proxy)["model"]
    assert row["counters"]["attempts"] == attempts + 1
    assert row["state"] == "healthy"
    line = log_line(rig.proxy, response)
    assert line["upstream_failures"] == "model:context_length"
    assert "maximum context length is 2048 tokens" in rig.proxy.log()
    assert "lorem ipsum" not in rig.proxy.log()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("fake", "status", "reason"),
    [("e401", 401, "auth"), ("e403", 403, "auth"), ("e404", 404, "not_found"), ("e400-model", 400, "not_found")],
)
def test_a_wrong_upstream_key_or_model_moves_on_and_cools_the_upstream_down(
    rig: Rig, fake: str, status: int, reason: str, stream: bool
) -> None:
    name = fake + ("-s" if stream else "")  # each cools down at once: one entry for each way of asking
    nxt = "model" if name == "e401" else "spare"
    before = scrape(rig.proxy, CLIENT_KEY)
    calls = len(rig.fakes[fake].completions())
    first = post(rig, name, stream=stream)
    assert served_by(first, stream)
    assert first.headers["x-upstream"] == nxt
    assert len(rig.fakes[fake].completions()) == calls + 1
    # The upstream did receive the key, so the checks on the log below are not vacuous.
    assert rig.fakes[fake].completions()[-1].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"

    row = health(rig.proxy)[name]
    assert row["state"] == "cooling"
    assert 20 < row["cooldown_seconds"] <= 30  # UPSTREAM_COOLDOWN_PERIOD's default, though failures=1000
    assert row["last_error"].startswith(f"HTTP {status}")
    after = scrape(rig.proxy, CLIENT_KEY)
    labels = {"upstream": name, "reason": reason}
    failures = "spaceserve_proxy_failures_total"
    assert metric(after, failures, **labels) == metric(before, failures, **labels) + 1
    assert metric(after, "spaceserve_proxy_upstream_cooling_down", upstream=name) == 1

    # The next request goes straight past it.
    second = post(rig, name, stream=stream)
    assert served_by(second, stream) and second.headers["x-upstream"] == nxt
    assert len(rig.fakes[fake].completions()) == calls + 1, "a misconfigured upstream was called again"
    assert health(rig.proxy)[name]["counters"]["skipped"] == 1

    log = rig.proxy.log()
    assert f"upstream {name} is misconfigured (HTTP {status}" in log
    assert UPSTREAM_SECRET not in log and UPSTREAM_SECRET not in first.text
    assert CLIENT_KEY not in log
    assert "Say hi." not in log  # no prompt text


def test_a_404_for_the_clients_own_model_name_moves_on_without_cooldown(rig: Rig) -> None:
    for _ in range(2):
        response = chat(rig.proxy, "e404-client", key=CLIENT_KEY)
        assert served_by(response, False) == "ok from spare"
    row = health(rig.proxy)["e404-client"]
    assert row["state"] == "healthy" and row["counters"]["failures"] >= 2
    assert rig.fakes["e404"].completions()[-1].body["model"] == "e404-client"  # the client's own name
    # Where no upstream has the model, the client hears so, in the upstream's words.
    response = chat(rig.proxy, "nobody-has-it", key=CLIENT_KEY)
    assert response.status_code == 404
    assert response.headers["x-upstream"] == "e404-client"
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["message"] == "The model `gpt-nope` does not exist"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_too_long_for_every_tier_gives_the_last_tiers_400(rig: Rig, stream: bool) -> None:
    response = post(rig, "all-too-small", stream=stream)
    assert response.status_code == 400
    assert response.headers["x-upstream"] == "context"
    assert response.json() == TOO_LONG["context"][1]
    line = log_line(rig.proxy, response)
    assert line["upstream_failures"] == "context-tgi:context_length,context-llama:context_length,context:context_length"


def test_too_long_for_one_tier_and_the_next_down_gives_502_listing_both(rig: Rig) -> None:
    response = chat(rig.proxy, "too-small-then-down", key=CLIENT_KEY)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "context: too long for its context (HTTP 400: This model's maximum context length is 4096" in message
    assert "e500: HTTP 500: the upstream fell over" in message


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
    listed = [model.id for model in client.models.list()]
    assert listed == httpx.get(rig.proxy.url + "/health").json()["models"]
    assert {"refused", "e500", "model", "all-fail", "e404-client"} <= set(listed)
    question = [{"role": "user", "content": "What is the capital of France?"}]

    def direct_reply() -> str | None:
        reply = server.client().chat.completions.create(model=MODEL_ID, messages=question, max_tokens=8, temperature=0)
        return reply.choices[0].message.content

    # The proxy's request finds the prompt cached; so does the direct one it is compared with (a
    # cold and a warm request evaluate the prompt in different batch shapes, which can flip a
    # near-tie of the 270M model's).
    direct_reply()
    raw = client.chat.completions.with_raw_response.create(
        model="refused", messages=question, max_tokens=8, temperature=0
    )
    via_proxy = raw.parse()
    direct_content = direct_reply()
    assert raw.headers["x-upstream"] == "model"
    assert via_proxy.choices[0].message.content == direct_content
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
