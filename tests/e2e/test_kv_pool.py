"""The KV pool the slots share (KV_CACHE_TOKENS), max_tokens clamping, and memory refused at start-up."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from ..support.servers import ServerProcess
from .test_errors import assert_openai_error
from .test_health_and_sources import failed_health

CONTEXT = 128
POOL = 300  # two requests of up to 128 tokens (prompt + max_tokens) fit; a third waits for cells


@pytest.fixture(scope="module")
def pooled(start_server: Any) -> ServerProcess:
    server: ServerProcess = start_server(
        CONTEXT_SIZE=str(CONTEXT), PARALLEL_SLOTS="4", KV_CACHE_TOKENS=str(POOL), MAX_QUEUE="8", MODEL_ALIASES="*"
    )
    return server


def counting(start: int) -> str:
    return ", ".join(str(n) for n in range(start, start + 8)) + ","


def complete(server: ServerProcess, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": "any", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_health_describes_the_pool(pooled: ServerProcess) -> None:
    health = httpx.get(pooled.url + "/health").json()
    assert health["kv_cache"].startswith(f"a pool of {POOL} tokens, f16")


def test_a_request_waits_for_cells_and_no_running_reply_is_disturbed(pooled: ServerProcess) -> None:
    starts = (1, 11, 21)
    alone = {start: complete(pooled, counting(start), 96)["choices"][0]["text"] for start in starts}
    results: dict[int, str] = {}

    def run(start: int) -> None:
        results[start] = complete(pooled, counting(start), 96)["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(start,)) for start in starts]
    for thread in threads:
        thread.start()
    seen_waiting = False
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        health = httpx.get(pooled.url + "/health").json()
        # Four free slots, but cells for two: the third request queues although a slot is free.
        seen_waiting |= health["active"] == 2 and health["queued"] == 1
        assert health["active"] <= 2
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert seen_waiting
    assert results == alone  # every reply is what it is alone: nothing was cut or overwritten


def test_max_tokens_beyond_the_room_is_clamped_to_the_end_of_the_context(pooled: ServerProcess) -> None:
    result = complete(pooled, counting(1), 100_000)
    usage = result["usage"]
    assert result["choices"][0]["finish_reason"] == "length"
    assert CONTEXT - 2 <= usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT


def test_strict_mode_refuses_max_tokens_beyond_the_room(start_server: Any) -> None:
    server: ServerProcess = start_server(
        CONTEXT_SIZE=str(CONTEXT), PARALLEL_SLOTS="1", MAX_TOKENS_OVERFLOW="error", MODEL_ALIASES="*"
    )
    body = {"model": "any", "prompt": counting(1), "max_tokens": 4000}
    response = httpx.post(server.url + "/v1/completions", json=body)
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert "4000" in error["message"] and "max_tokens" in error["message"]
    assert error["param"] == "max_tokens"


def test_a_kv_cache_that_cannot_fit_is_refused_saying_what_would(start_server: Any) -> None:
    # 64 streams of 32,768 tokens: 2M tokens x 18 KiB (Gemma 3 270M) = 36 GiB, more than this machine.
    server: ServerProcess = start_server(wait="listening", CONTEXT_SIZE="32768", PARALLEL_SLOTS="64")
    reason = str(failed_health(server)["reason"])
    assert "at most" in reason and "tokens fit" in reason and "KV_CACHE_TOKENS" in reason


def test_a_pool_smaller_than_one_request_is_refused(start_server: Any) -> None:
    server: ServerProcess = start_server(wait="listening", CONTEXT_SIZE="1024", KV_CACHE_TOKENS="512")
    reason = str(failed_health(server)["reason"])
    assert "KV_CACHE_TOKENS=512" in reason and "at least 1024" in reason


def test_a_q8_0_kv_cache_serves_the_same_counting(start_server: Any) -> None:
    """KV_CACHE_TYPE=q8_0 (with flash attention, which a quantised V needs) halves the cache."""
    server: ServerProcess = start_server(
        CONTEXT_SIZE=str(CONTEXT),
        PARALLEL_SLOTS="2",
        KV_CACHE_TOKENS=str(POOL),
        KV_CACHE_TYPE="q8_0",
        MODEL_ALIASES="*",
    )
    assert "q8_0" in httpx.get(server.url + "/health").json()["kv_cache"]
    text = complete(server, counting(1), 12)["choices"][0]["text"]
    assert "9, 10, 11" in text, text
