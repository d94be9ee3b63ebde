"""Streaming relay end to end: chunks pass through, failures before the first chunk are invisible,
failures after it end in an error event and [DONE], and a client that leaves is felt upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ..support.proxy import FakeUpstream, Rig, closed_port_url, health, sse_data, start_proxy, upstream
from ..support.servers import MODEL_ID, ServerProcess
from ..support.waiting import wait_for

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def rig(start_server: Any, server: ServerProcess) -> Iterator[Rig]:
    fakes = {
        "hang": FakeUpstream("hang", name="hang"),
        "drop": FakeUpstream("drop", name="drop"),
        "hold": FakeUpstream("hold", name="hold"),
        "stall": FakeUpstream("hang", name="stall"),
        "tgi": FakeUpstream("hf", name="tgi"),
    }
    fakes["tgi"].text = " Paris."
    ups = [
        upstream("model", server.url + "/v1", model=MODEL_ID, first_byte_timeout=60, total_timeout=120),
        upstream("refused", closed_port_url()),
        upstream("hang", fakes["hang"].url, first_byte_timeout=0.5),
        upstream("drop", fakes["drop"].url),
        upstream("hold", fakes["hold"].url),
        upstream("stall", fakes["stall"].url, first_byte_timeout=15),
        upstream("tgi", fakes["tgi"].url + "/generate", kind="hf-text-generation", model="tgi-model"),
    ]
    aliases = {
        "model": ["model"],
        "flaky": ["refused", "hang", "model"],
        "drop": ["drop", "model"],
        "hold": ["hold"],
        "stall": ["stall"],
        "tgi": ["tgi"],
    }
    proxy = start_proxy(start_server, {"upstreams": ups, "aliases": aliases})
    yield Rig(proxy, fakes)
    for fake in fakes.values():
        fake.stop()


def test_openai_client_streams_through_the_proxy_after_invisible_fallbacks(rig: Rig) -> None:
    client = rig.proxy.client()
    whole = client.chat.completions.create(model="model", messages=QUESTION, max_tokens=6, temperature=0)
    expected = whole.choices[0].message.content
    assert expected
    before = health(rig.proxy)
    stream = client.chat.completions.create(model="flaky", messages=QUESTION, max_tokens=6, temperature=0, stream=True)
    pieces, finishes = [], []
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                finishes.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == expected
    assert finishes == ["length"]
    after = health(rig.proxy)
    # Both broken upstreams were really tried before the model server answered.
    for name in ("refused", "hang"):
        assert after[name]["counters"]["failures"] == before[name]["counters"]["failures"] + 1


def test_stream_carries_the_upstream_header_and_ends_with_done(rig: Rig) -> None:
    body = {"model": "flaky", "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", rig.proxy.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["x-upstream"] == "model"
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    data = sse_data(text)
    assert data[-1] == "[DONE]"
    assert all("error" not in json.loads(item) for item in data[:-1])


def test_a_stream_broken_after_its_first_chunk_ends_with_an_error_event(rig: Rig) -> None:
    attempts_on_model = health(rig.proxy)["model"]["counters"]["attempts"]
    body = {"model": "drop", "messages": QUESTION, "stream": True}
    with httpx.stream("POST", rig.proxy.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["x-upstream"] == "drop"
        data = sse_data(response.read().decode())
    assert len(data) == 3, data
    first = json.loads(data[0])
    assert first["choices"][0]["delta"]["content"] == "partial"  # relayed as the upstream sent it
    error = json.loads(data[1])["error"]
    assert error["code"] == "upstream_stream_broken"
    assert "the upstream 'drop' failed after the stream had started" in error["message"]
    assert data[2] == "[DONE]"
    # Once content has gone out, no other upstream may add to it.
    assert health(rig.proxy)["model"]["counters"]["attempts"] == attempts_on_model


def test_the_openai_client_sees_the_broken_stream_as_an_error(rig: Rig) -> None:
    stream = rig.proxy.client().chat.completions.create(model="drop", messages=QUESTION, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="failed after the stream had started"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["partial"]


def test_a_client_leaving_a_stream_disconnects_the_upstream(rig: Rig) -> None:
    fake = rig.fakes["hold"]
    fake.disconnected.clear()
    body = {"model": "hold", "messages": QUESTION, "stream": True}
    with httpx.stream("POST", rig.proxy.url + "/v1/chat/completions", json=body, timeout=30) as response:
        # Keep the line iterator referenced: dropping it makes httpx close the connection early.
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "first"
        assert health(rig.proxy)["hold"]["in_flight"] == 1
        assert not fake.disconnected.is_set()
    # The upstream holds its stream open forever; only the proxy closing it ends this wait.
    assert fake.disconnected.wait(5), "the upstream never saw the client leave"
    assert wait_for(lambda: health(rig.proxy)["hold"]["in_flight"] == 0, timeout=5)


def test_a_client_giving_up_before_the_answer_disconnects_the_upstream(rig: Rig) -> None:
    fake = rig.fakes["stall"]
    fake.disconnected.clear()
    body = {"model": "stall", "messages": QUESTION}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(rig.proxy.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    assert fake.completions(), "the request reached the upstream"
    assert fake.disconnected.wait(5), "the upstream kept working for a client that had left"
    assert wait_for(lambda: health(rig.proxy)["stall"]["in_flight"] == 0, timeout=5)


def test_text_generation_upstream_behind_the_openai_api(rig: Rig) -> None:
    fake = rig.fakes["tgi"]
    client = rig.proxy.client()
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    reply = client.chat.completions.create(
        model="tgi", messages=messages, max_tokens=8, temperature=0, stop=["\n"]
    )  # fmt: skip
    assert reply.choices[0].message.content == " Paris."
    assert reply.model == "tgi-model"
    sent = fake.completions()[-1]
    assert sent.path == "/v1/generate"
    assert sent.body == {
        "inputs": "System: Be brief.\nUser: What is the capital of France?\nAssistant:",
        "parameters": {"return_full_text": False, "max_new_tokens": 8, "do_sample": False, "stop": ["\n"]},
    }
    stream = client.chat.completions.create(model="tgi", messages=QUESTION, temperature=0.7, top_p=0.9, stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == " Paris."
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, "stop"]
    assert fake.completions()[-1].body["parameters"] == {"return_full_text": False, "temperature": 0.7, "top_p": 0.9}
    text = client.completions.create(model="tgi", prompt="The capital of France is", max_tokens=3)
    assert text.choices[0].text == " Paris."
    assert fake.completions()[-1].body["inputs"] == "The capital of France is"
