"""Many users at once on the real model: batching keeps texts, cancellation frees slots, the queue is
bounded, deadlines stop generation, the prefix cache is reused across sequences."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.servers import MODEL_ID, ServerProcess
from ..support.waiting import wait_for
from .test_errors import assert_openai_error, wait_idle

# Continuations the model is sure of. At temperature 0 a near-tie between two tokens can flip with
# the shape of the batch (llama.cpp's CPU kernels sum in a different order for different batch
# sizes), so the comparison uses prompts whose next tokens are not near-ties.
PROMPTS = ["1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "A, B, C, D,", "def fibonacci(n):"]
SYSTEM = (
    "You are a careful web developer. You write semantic HTML5, modern CSS with custom properties and "
    "grid layouts, and small vanilla JavaScript modules without frameworks. Every page you produce is "
    "responsive, accessible (labels, landmarks, alt text, visible focus) and fast. "
) * 6


def complete(server: ServerProcess, prompt: str, max_tokens: int = 24) -> str:
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def chat(server: ServerProcess, user: str, **extra: Any) -> httpx.Response:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def test_concurrent_requests_produce_the_text_they_produce_alone(server: ServerProcess) -> None:
    alone = [complete(server, p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: complete(server, p), PROMPTS))
    assert together == alone
    assert all(text.strip() for text in alone)


def test_prefix_cache_reports_cached_tokens_for_a_shared_system_prompt(server: ServerProcess) -> None:
    first = chat(server, "Make a landing page for a bakery.").json()
    second = chat(server, "Make a contact form.").json()
    system_tokens = first["usage"]["prompt_tokens"] - 20  # the user turn is short
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= system_tokens
    assert second["timings"]["prompt_n"] < 30  # only the new user turn was evaluated


def test_prefix_is_shared_with_a_sequence_running_beside_it(server: ServerProcess) -> None:
    """While one request holding the system prompt still generates, another reuses its prefix."""
    chat(server, "Warm the cache with this prompt.")
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Write a long article."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(timeout=120) as http, http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        next(lines)
        assert httpx.get(server.url + "/health").json()["active"] == 1
        beside = chat(server, "And a pricing table.").json()
        assert httpx.get(server.url + "/health").json()["active"] >= 1
    assert beside["usage"]["prompt_tokens_details"]["cached_tokens"] >= beside["usage"]["prompt_tokens"] - 20
    wait_idle(server)


@pytest.fixture(scope="module")
def one_slot(start_server: object, model_path: Path) -> ServerProcess:
    return start_server(  # type: ignore[operator, no-any-return]
        MODEL_SOURCE=str(model_path), PARALLEL_SLOTS="1", MAX_QUEUE="1", CONTEXT_SIZE="2048"
    )


class Stream:
    """A streaming request held open in a thread, so the test can close it when it likes."""

    def __init__(self, server: ServerProcess, max_tokens: int = 1500, **extra: Any) -> None:
        self.body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True, **extra}
        self.url = server.url + "/v1/completions"
        self.started = threading.Event()
        self.first_chunk_at: float | None = None
        self.status: int | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=120) as http, http.stream("POST", self.url, json=self.body) as response:
            self.status = response.status_code
            self.started.set()
            for line in response.iter_lines():
                if line.startswith("data: ") and self.first_chunk_at is None:
                    self.first_chunk_at = time.monotonic()
                if self._stop.is_set():
                    return  # leaving the with-blocks closes the connection mid-stream

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def health(server: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(server.url + "/health").json())


def test_full_queue_is_429_and_a_disconnect_lets_the_queued_request_start(one_slot: ServerProcess) -> None:
    running = Stream(one_slot)
    queued: Stream | None = None
    try:
        assert wait_for(lambda: running.first_chunk_at is not None, timeout=30)
        queued = Stream(one_slot)
        assert wait_for(lambda: health(one_slot)["queued"] == 1, timeout=30)
        refused = httpx.post(one_slot.url + "/v1/completions", json={"model": MODEL_ID, "prompt": "x", "max_tokens": 2})
        error = assert_openai_error(refused, 429, "queue_full")
        assert error["type"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert queued.first_chunk_at is None
        running.close()
        # The queued request starts because the first one was cut short when its client left (its
        # access-log line has no finish reason), not because it ran out its 1,500 tokens.
        assert wait_for(lambda: queued is not None and queued.first_chunk_at is not None, timeout=60)
        entries = [
            json.loads(line.split("spaceserve.access ", 1)[1])
            for line in one_slot.log().splitlines()
            if "spaceserve.access" in line and "/v1/completions" in line
        ]
        assert "finish_reason" not in next(e for e in entries if e["status"] == 200)
    finally:
        running.close()
        if queued is not None:
            queued.close()
        wait_idle(one_slot)


def test_deadline_stops_a_long_generation(one_slot: ServerProcess) -> None:
    started = time.monotonic()
    body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 1500, "timeout": 1.5}
    response = httpx.post(one_slot.url + "/v1/completions", json=body, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    payload = response.json()
    assert payload["choices"][0]["finish_reason"] == "length"
    assert 0 < payload["usage"]["completion_tokens"] < 1500
    assert elapsed < 10


def test_deadline_passing_in_the_queue_is_503(one_slot: ServerProcess) -> None:
    running = Stream(one_slot)
    try:
        assert wait_for(lambda: running.first_chunk_at is not None, timeout=30)
        body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 2, "timeout": 1}
        response = httpx.post(one_slot.url + "/v1/completions", json=body, timeout=60)
        assert_openai_error(response, 503, "timeout")
    finally:
        running.close()
        wait_idle(one_slot)


def test_sampling_stays_per_request_under_concurrency(server: ServerProcess) -> None:
    """A seeded hot request beside greedy ones: each keeps its own sampler and random stream."""
    seeded = {"model": MODEL_ID, "prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0.8, "seed": 99}
    alone = httpx.post(server.url + "/v1/completions", json=seeded, timeout=60).json()["choices"][0]["text"]
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(complete, server, p) for p in PROMPTS[1:]]
        beside = pool.submit(
            lambda: httpx.post(server.url + "/v1/completions", json=seeded, timeout=60).json()["choices"][0]["text"]
        )
        assert beside.result() == alone
        assert [f.result() for f in others] == [complete(server, p) for p in PROMPTS[1:]]
