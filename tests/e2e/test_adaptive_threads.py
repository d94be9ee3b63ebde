"""ADAPTIVE_THREADS on the real model: the engine measures a neighbouring thread count while it
generates, reports it in /metrics, and the text does not depend on it (each dot product is one
thread's work whatever the count)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..support.servers import MODEL_ID, ServerProcess
from .test_metrics_and_limits import scrape

PROMPT = "1, 2, 3, 4, 5, 6,"
TOKENS = 560  # more than two probe periods of 256 steps


@pytest.fixture(scope="module")
def fixed(start_server: Any) -> ServerProcess:
    server: ServerProcess = start_server(PARALLEL_SLOTS="4", CONTEXT_SIZE="2048", ADAPTIVE_THREADS="false")
    return server


def metric(server: ServerProcess, name: str) -> float:
    return scrape(server, key=None)[name + "{}"]


def count(server: ServerProcess) -> dict[str, Any]:
    body = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "seed": 1}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def test_probes_are_counted_and_the_text_is_the_same_as_with_fixed_threads(
    server: ServerProcess, fixed: ServerProcess
) -> None:
    probes = metric(server, "spaceserve_thread_probes_total")
    adaptive = count(server)
    assert adaptive["usage"]["completion_tokens"] == TOKENS
    assert metric(server, "spaceserve_thread_probes_total") >= probes + 2
    assert metric(server, "spaceserve_decode_threads") in (1, 2)

    reference = count(fixed)
    assert adaptive["choices"][0]["text"] == reference["choices"][0]["text"]
    assert metric(fixed, "spaceserve_thread_probes_total") == 0
    assert metric(fixed, "spaceserve_decode_threads") == 2  # CPU_CORES=2, as on cpu-basic
