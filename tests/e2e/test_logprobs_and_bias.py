"""logprobs / top_logprobs and logit_bias on the real model, in OpenAI's shapes, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from ..support.servers import MODEL_ID, ServerProcess
from ..support.vocab import load_vocab, tokenize

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"


@pytest.fixture(scope="module")
def token_ids(model_path: Path) -> Iterator[Any]:
    with load_vocab(model_path) as vocab:
        yield lambda text: tokenize(vocab, text)


def stream_chunks(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_chat_logprobs_in_openai_shape(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert len(entries) == response.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes is not None and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        values = [alt.logprob for alt in entry.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # Greedy decoding picks the most likely token, which heads the alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_chat_logprobs_streamed_match_the_whole_reply(server: ServerProcess, client: OpenAI) -> None:
    body = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 10, "temperature": 0, "logprobs": True}
    whole = client.chat.completions.create(**body)  # type: ignore[call-overload]
    chunks = stream_chunks(server, "/v1/chat/completions", body)
    streamed = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    expected = whole.choices[0].logprobs.content
    assert [e["token"] for e in streamed] == [e.token for e in expected]
    assert [e["logprob"] for e in streamed] == pytest.approx([e.logprob for e in expected], abs=1e-3)
    assert all(e["top_logprobs"] == [] for e in streamed)  # top_logprobs not asked for


def test_no_logprobs_unless_asked(server: ServerProcess, client: OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=4)
    assert response.choices[0].logprobs is None
    chunks = stream_chunks(server, "/v1/completions", {"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 3})
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c["choices"])


def test_text_completion_logprobs_streamed_and_not(server: ServerProcess, client: OpenAI) -> None:
    response = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=6, temperature=0, logprobs=2)
    choice = response.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0
        assert len(top) <= 2 and max(top.values()) == pytest.approx(value) and top[token] == pytest.approx(value)
    body = {"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 6, "temperature": 0, "logprobs": 2}
    chunks = [c["choices"][0] for c in stream_chunks(server, "/v1/completions", body)]
    parts = [c["logprobs"] for c in chunks if c["logprobs"] is not None]
    assert [t for p in parts for t in p["tokens"]] == lp.tokens
    assert [o for p in parts for o in p["text_offset"]] == lp.text_offset
    assert [v for p in parts for v in p["token_logprobs"]] == pytest.approx(lp.token_logprobs, abs=1e-3)


def test_logit_bias_minus_100_bans_a_token(client: OpenAI, token_ids: Any) -> None:
    free = client.completions.create(model=MODEL_ID, prompt=COUNTING, max_tokens=4, temperature=0, logprobs=0)
    first = free.choices[0].logprobs.tokens[0]  # type: ignore[union-attr, index]
    [banned] = token_ids(first)
    biased = client.completions.create(
        model=MODEL_ID, prompt=COUNTING, max_tokens=4, temperature=0, logprobs=0, logit_bias={str(banned): -100}
    )
    tokens = biased.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert tokens and first not in tokens
    # Sampling too, many times over.
    for seed in range(2):
        sampled = client.completions.create(
            model=MODEL_ID, prompt=COUNTING, max_tokens=8, seed=seed, logprobs=0, logit_bias={str(banned): -100}
        )
        assert first not in sampled.choices[0].logprobs.tokens  # type: ignore[union-attr, operator]


def test_logit_bias_plus_100_forces_a_token(client: OpenAI, token_ids: Any) -> None:
    [forced] = token_ids(" banana")
    for temperature in (0.0, 1.0):
        response = client.completions.create(
            model=MODEL_ID, prompt=COUNTING, max_tokens=3, temperature=temperature, logit_bias={str(forced): 100}
        )
        assert response.choices[0].text == " banana" * 3


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"logit_bias": {"99999999": 1}}, "logit_bias"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_out_of_range_values_are_400(server: ServerProcess, path: str, extra: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": MODEL_ID, "max_tokens": 2, **extra}
    body.update({"messages": QUESTION} if "chat" in path else {"prompt": COUNTING})
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_tokens_have_no_logprobs(server: ServerProcess, stream: bool) -> None:
    body = {"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 12, "temperature": 0, "logprobs": 1, "stop": "9, 1"}
    if stream:
        chunks = [c["choices"][0] for c in stream_chunks(server, "/v1/completions", body)]
        text = "".join(c["text"] for c in chunks)
        tokens = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
    else:
        response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        choice = response.json()["choices"][0]
        text, tokens = choice["text"], choice["logprobs"]["tokens"]
    # The model goes on " 9, 10, ..." (tokens " ", "9", ",", " ", "1", ...): only the first token shows.
    assert text == " "
    assert tokens == [" "]
