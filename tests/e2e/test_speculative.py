"""Speculative decoding from the prompt on the real model: the same text as without it at
temperature 0, alone and beside other streams; acceptance in ``timings`` and ``/metrics``; a client
that leaves mid-draft frees its slot; sampling still ends normally."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from ..support.servers import MODEL_ID, ServerProcess
from .test_errors import wait_idle

NEAR_TIE = 0.5  # nats between the best two tokens
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Harbour Bakery</title>
</head>
<body>
  <header><h1>Harbour Bakery</h1></header>
  <main>
    <section id="bread">
      <h2>Bread</h2>
      <ul>
        <li>Country sourdough - 4.50</li>
        <li>Dark rye with seeds - 5.20</li>
      </ul>
    </section>
    <p>12 Quay Street. Open Tuesday to Sunday, 7:00 to 15:00.</p>
  </main>
</body>
</html>
"""
CODE = """def total(prices, discount):
    subtotal = sum(prices)
    if discount:
        subtotal = subtotal * (1 - discount)
    return round(subtotal, 2)
"""
ABOUT = (
    "Harbour Bakery bakes sourdough, rye and spelt loaves every morning from six o'clock and sells lemon "
    "drizzle, carrot cake and a chocolate torte on weekends at 12 Quay Street"
)
# Edits: answers that copy long spans of the prompt, as a site generator's edit requests do.
EDITS = [
    f"Here is my page:\n\n{PAGE}\nRepeat the whole page exactly, changing only the title to 'Quay Bakery'.",
    f"Here is my page:\n\n{PAGE}\nRepeat the page, adding a third bread: Spelt and honey - 4.80.",
    f"Here is a function:\n\n{CODE}\nRewrite it exactly, but rename `total` to `order_total`.",
]


@pytest.fixture(scope="module")
def spec_on(start_server: Any) -> ServerProcess:
    server: ServerProcess = start_server(PARALLEL_SLOTS="4", CONTEXT_SIZE="2048", SPECULATIVE="true")
    return server


@pytest.fixture(scope="module")
def spec_off(start_server: Any) -> ServerProcess:
    server: ServerProcess = start_server(PARALLEL_SLOTS="4", CONTEXT_SIZE="2048", SPECULATIVE="false")
    return server


def edit(server: ServerProcess, prompt: str, max_tokens: int = 120, **extra: Any) -> dict[str, Any]:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def sure_prefix(reply: dict[str, Any]) -> tuple[str, int]:
    """The reply's text up to its first near-tie (top two tokens within NEAR_TIE nats), and its
    length in tokens. Past a near-tie, a different batch shape may flip the choice
    (ARCHITECTURE.md, deliberate deviations); before it, any other token is a bug."""
    sure = b""
    entries = reply["choices"][0]["logprobs"]["content"]
    for n, entry in enumerate(entries):
        top = [t["logprob"] for t in entry["top_logprobs"]]
        if len(top) > 1 and top[0] - top[1] < NEAR_TIE:
            return sure.decode("utf-8", errors="ignore"), n
        sure += bytes(entry["bytes"])
    return sure.decode("utf-8", errors="ignore"), len(entries)


def metric(server: ServerProcess, name: str) -> float:
    body = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", body, re.MULTILINE))


@pytest.fixture(scope="module")
def without_drafts(spec_off: ServerProcess) -> list[tuple[str, int]]:
    """Each edit's reply without speculation, up to its first near-tie."""
    replies = [edit(spec_off, p, logprobs=True, top_logprobs=2) for p in EDITS]
    assert all(r["timings"]["draft_n"] == 0 for r in replies)
    return [sure_prefix(r) for r in replies]


def test_drafts_give_the_same_text_at_temperature_zero(
    spec_on: ServerProcess, without_drafts: list[tuple[str, int]]
) -> None:
    replies = [edit(spec_on, p) for p in EDITS]
    for reply, (sure, tokens) in zip(replies, without_drafts, strict=True):
        assert tokens >= 40, "an edit prompt that decides nothing for sure tests nothing"
        assert text(reply).startswith(sure)
    page = replies[0]["timings"]
    assert page["draft_n"] > 0 and 0 < page["draft_n_accepted"] <= page["draft_n"]


def test_drafts_give_the_same_text_beside_other_streams(
    spec_on: ServerProcess, without_drafts: list[tuple[str, int]]
) -> None:
    jobs = [*EDITS, "Count from 1 to 40, separated by commas."]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda p: edit(spec_on, p), jobs))
    for reply, (sure, _) in zip(together, without_drafts, strict=False):
        assert text(reply).startswith(sure)
    assert sum(r["timings"]["draft_n_accepted"] for r in together) > 0


def test_acceptance_is_counted_in_metrics(spec_on: ServerProcess) -> None:
    drafted = metric(spec_on, "spaceserve_speculative_draft_tokens_total")
    accepted = metric(spec_on, "spaceserve_speculative_accepted_tokens_total")
    reply = edit(spec_on, EDITS[0])
    timings = reply["timings"]
    assert timings["draft_n_accepted"] > 0
    assert metric(spec_on, "spaceserve_speculative_draft_tokens_total") - drafted == timings["draft_n"]
    assert metric(spec_on, "spaceserve_speculative_accepted_tokens_total") - accepted == timings["draft_n_accepted"]


def test_a_client_that_leaves_mid_draft_frees_its_slot(spec_on: ServerProcess) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": EDITS[1]}],
        "max_tokens": 600,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", spec_on.url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(12):  # a few deltas in: drafts are being verified
            next(lines)
    wait_idle(spec_on)
    after = edit(spec_on, EDITS[2], max_tokens=8)  # the slot serves the next request
    assert after["choices"][0]["finish_reason"] in ("stop", "length")


def test_sampling_with_drafts_completes(spec_on: ServerProcess) -> None:
    reply = edit(spec_on, EDITS[0], max_tokens=150, temperature=0.8, seed=7)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert text(reply).strip()
    assert reply["usage"]["completion_tokens"] == reply["timings"]["predicted_n"]
    assert reply["timings"]["draft_n"] >= reply["timings"]["draft_n_accepted"] >= 0


def test_logprobs_with_drafts_cover_every_token(spec_on: ServerProcess, without_drafts: list[tuple[str, int]]) -> None:
    reply = edit(spec_on, EDITS[0], logprobs=True, top_logprobs=2)
    entries = reply["choices"][0]["logprobs"]["content"]
    assert reply["timings"]["draft_n_accepted"] > 0
    assert len(entries) == reply["usage"]["completion_tokens"]
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", errors="replace") == text(reply)
    assert text(reply).startswith(without_drafts[0][0])


def test_a_grammar_with_drafts_still_holds(spec_on: ServerProcess) -> None:
    """Drafts copied from the prompt pass through the grammar like sampled tokens: the schema
    forces a long sentence that the prompt holds, so once 12 of its tokens are out the rest is
    drafted from the prompt and each draft token is checked by the grammar sampler."""
    schema = {
        "type": "object",
        "properties": {"about": {"type": "string", "enum": [ABOUT]}},
        "required": ["about"],
        "additionalProperties": False,
    }
    prompt = f"Our bakery in one sentence: {ABOUT}. Put that sentence in JSON."
    response_format = {"type": "json_schema", "json_schema": {"name": "about", "schema": schema, "strict": True}}
    reply = edit(spec_on, prompt, max_tokens=200, response_format=response_format)
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert json.loads(text(reply)) == {"about": ABOUT}
    assert reply["timings"]["draft_n_accepted"] > 0
