"""Metrics and rate limits end to end: the real server on the embedded model, raw HTTP and openai."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spaceserve.base.auth import fingerprint

from ..support.servers import MODEL_ID, ServerProcess
from .test_errors import wait_idle

LIMITED = "sk-test-limited-41c7"  # 2 requests per minute
THRIFTY = "sk-test-thrifty-90d2"  # 10 generated tokens per minute
FREE = "sk-test-free-5be0"  # no limit (the default is off)
CHAT = "/v1/chat/completions"


def chat_body(max_tokens: int = 4, **extra: object) -> dict[str, object]:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": max_tokens,
        **extra,
    }


@pytest.fixture(scope="module")
def ops(start_server: object, model_path: Path) -> ServerProcess:
    overrides = {fingerprint(LIMITED): {"rpm": 2}, fingerprint(THRIFTY): {"tpm": 10}}
    return start_server(  # type: ignore[operator, no-any-return]
        MODEL_SOURCE=str(model_path),
        API_KEYS=f"{LIMITED},{THRIFTY},{FREE}",
        RATE_LIMIT_OVERRIDES=json.dumps(overrides),
        # One slot and no queue, so that a second concurrent request is refused with queue_full.
        PARALLEL_SLOTS="1",
        MAX_QUEUE="0",
        CONTEXT_SIZE="1024",
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scrape(server: ServerProcess, key: str | None = FREE) -> dict[str, float]:
    """Every sample of ``/metrics`` as ``name{label=value,...}`` -> value (``key=None``: no auth)."""
    response = httpx.get(server.url + "/metrics", headers=auth(key) if key else {}, timeout=10)
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    key = name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return values.get(key, 0.0)


def wait_for(server: ServerProcess, name: str, at_least: float, timeout: float = 15, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = metric(scrape(server), name, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_metrics_need_a_key(ops: ServerProcess) -> None:
    response = httpx.get(ops.url + "/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_model_state_and_engine_gauges(ops: ServerProcess) -> None:
    values = scrape(ops)
    assert metric(values, "spaceserve_model_state", state="ok") == 1
    assert metric(values, "spaceserve_model_state", state="loading") == 0
    assert metric(values, "spaceserve_model_load_seconds") > 0
    assert metric(values, "spaceserve_slots") == 1
    assert metric(values, "spaceserve_active_sequences") == 0
    assert metric(values, "spaceserve_queue_depth") == 0


def test_request_token_and_latency_metrics_move_with_real_requests(ops: ServerProcess) -> None:
    before = scrape(ops)
    client = ops.client(FREE)
    usages = []
    for _ in range(2):
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=chat_body()["messages"], max_tokens=5, temperature=0
        )  # type: ignore[arg-type]
        assert reply.usage is not None
        usages.append(reply.usage)
    streamed = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=chat_body()["messages"], max_tokens=3, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert streamed[-1].usage is not None
    usages.append(streamed[-1].usage)
    after = scrape(ops)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("spaceserve_requests_total", route=CHAT, status="200", model=MODEL_ID) == 3
    assert moved("spaceserve_completion_tokens_total", model=MODEL_ID) == 5 + 5 + 3
    assert moved("spaceserve_prompt_tokens_total", model=MODEL_ID) == sum(u.prompt_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details)  # type: ignore[misc]
    assert cached > 0  # the same prompt three times: the prompt cache serves the repeats
    assert moved("spaceserve_cached_prompt_tokens_total", model=MODEL_ID) == cached
    assert moved("spaceserve_time_to_first_token_seconds_count", model=MODEL_ID) == 3
    assert moved("spaceserve_time_to_first_token_seconds_sum", model=MODEL_ID) > 0
    assert moved("spaceserve_generated_tokens_per_second_count", model=MODEL_ID) == 3
    assert moved("spaceserve_request_duration_seconds_count", route=CHAT) == 3
    # Buckets are cumulative; every request took longer than nothing and less than 10 minutes.
    assert moved("spaceserve_request_duration_seconds_bucket", route=CHAT, le="600.0") == 3


def test_queue_rejections_and_client_disconnects_are_counted(ops: ServerProcess) -> None:
    before = scrape(ops)
    first_chunk = threading.Event()
    refusal_seen = threading.Event()

    def long_stream() -> None:
        # A long greedy reply, so it is surely still running when the client leaves.
        body = chat_body(1000, stream=True, temperature=0)
        with httpx.stream("POST", ops.url + CHAT, json=body, headers=auth(FREE), timeout=60) as r:
            for _ in r.iter_lines():
                first_chunk.set()
                refusal_seen.wait(60)  # hold the only slot while the second request arrives
                break  # then leave mid-stream: a client disconnect

    thread = threading.Thread(target=long_stream)
    thread.start()
    assert first_chunk.wait(60)
    refused = httpx.post(ops.url + CHAT, json=chat_body(), headers=auth(FREE), timeout=60)
    refusal_seen.set()
    thread.join()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert (
        metric(scrape(ops), "spaceserve_queue_rejections_total")
        == metric(before, "spaceserve_queue_rejections_total") + 1
    )
    previous = metric(before, "spaceserve_client_disconnects_total")
    assert wait_for(ops, "spaceserve_client_disconnects_total", previous + 1) == previous + 1
    # The slot is freed at the next decode step; the next test needs it (one slot, no queue).
    wait_idle(ops, timeout=60)


def test_limited_key_is_cut_off_at_its_limit_while_another_key_is_not(ops: ServerProcess) -> None:
    before = scrape(ops)
    seen = []
    for _ in range(2):
        response = httpx.post(ops.url + CHAT, json=chat_body(), headers=auth(LIMITED), timeout=60)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "2"
        seen.append(response.headers["x-ratelimit-remaining-requests"])
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in response.headers  # only rpm is set for this key
    assert seen == ["1", "0"]
    refused = httpx.post(ops.url + CHAT, json=chat_body(), headers=auth(LIMITED), timeout=60)
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "message": refused.json()["error"]["message"],
            "type": "rate_limit_exceeded",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # The limit covers every /v1 route, and the other key goes on unhindered.
    assert httpx.get(ops.url + "/v1/models", headers=auth(LIMITED)).status_code == 429
    for _ in range(4):
        free = httpx.post(ops.url + CHAT, json=chat_body(), headers=auth(FREE), timeout=60)
        assert free.status_code == 200
        assert not any(name.startswith("x-ratelimit") for name in free.headers)
    after = scrape(ops)
    label = {"key": fingerprint(LIMITED), "limit": "requests"}
    assert (
        metric(after, "spaceserve_rate_limit_rejections_total", **label)
        - metric(before, "spaceserve_rate_limit_rejections_total", **label)
        == 2
    )
    assert metric(after, "spaceserve_rate_limit_rejections_total", key=fingerprint(FREE), limit="requests") == 0


def test_generated_tokens_are_charged_after_the_response(ops: ServerProcess) -> None:
    first = httpx.post(ops.url + CHAT, json=chat_body(12), headers=auth(THRIFTY), timeout=60)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "10"
    assert first.headers["x-ratelimit-remaining-tokens"] == "10"  # counted when the response ended
    generated = first.json()["usage"]["completion_tokens"]
    assert generated == 12
    second = httpx.post(ops.url + CHAT, json=chat_body(), headers=auth(THRIFTY), timeout=60)
    assert second.status_code == 429
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    # 12 tokens taken from 10: the bucket is 2 below zero and refills at 10 per minute.
    assert 12 <= int(second.headers["retry-after"]) <= 19
    assert "generated tokens" in second.json()["error"]["message"]
