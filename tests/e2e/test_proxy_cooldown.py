"""Cooldown, half-open recovery, background health probes and replicas, against real servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from ..support.proxy import FakeUpstream, chat, closed_port_url, health, start_proxy, upstream
from ..support.waiting import wait_for


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(mode: str, name: str) -> FakeUpstream:
        made.append(FakeUpstream(mode, name=name))
        return made[-1]

    yield make
    for fake in made:
        fake.stop()


def test_cooldown_skips_a_failing_upstream_then_a_trial_brings_it_back(
    start_server: Any, fakes: Callable[..., FakeUpstream]
) -> None:
    flaky, steady = fakes("500", "flaky"), fakes("ok", "steady")
    proxy = start_proxy(
        start_server,
        [upstream("flaky", flaky.url), upstream("steady", steady.url)],
        UPSTREAM_COOLDOWN_FAILURES="2",
        UPSTREAM_COOLDOWN_WINDOW="30",
        UPSTREAM_COOLDOWN_PERIOD="1.5",
    )
    for _ in range(2):
        response = chat(proxy, "any-model")
        assert response.status_code == 200 and response.headers["x-upstream"] == "steady"
    assert len(flaky.completions()) == 2
    row = health(proxy)["flaky"]
    assert row["state"] == "cooling"
    assert row["cooling_until"] is not None
    assert row["last_error"] == "HTTP 500: the upstream fell over"

    # While it cools down, requests go straight past it.
    response = chat(proxy, "any-model")
    assert response.headers["x-upstream"] == "steady"
    assert len(flaky.completions()) == 2
    assert health(proxy)["flaky"]["counters"]["skipped"] == 1

    flaky.mode = "ok"
    assert wait_for(lambda: health(proxy)["flaky"]["state"] == "half-open")
    response = chat(proxy, "any-model")
    assert response.status_code == 200 and response.headers["x-upstream"] == "flaky"
    assert health(proxy)["flaky"]["state"] == "healthy"
    assert chat(proxy, "any-model").headers["x-upstream"] == "flaky"


def test_a_failed_trial_sends_the_upstream_back_to_cooling(
    start_server: Any, fakes: Callable[..., FakeUpstream]
) -> None:
    steady = fakes("ok", "steady")
    proxy = start_proxy(
        start_server,
        [upstream("dead", closed_port_url()), upstream("steady", steady.url)],
        UPSTREAM_COOLDOWN_FAILURES="1",
        UPSTREAM_COOLDOWN_PERIOD="1",
    )
    assert chat(proxy, "m").headers["x-upstream"] == "steady"
    assert health(proxy)["dead"]["state"] == "cooling"
    assert wait_for(lambda: health(proxy)["dead"]["state"] == "half-open")
    assert chat(proxy, "m").headers["x-upstream"] == "steady"
    row = health(proxy)["dead"]
    assert row["state"] == "cooling"
    assert row["counters"]["attempts"] == 2


def test_health_probes_take_a_sick_upstream_out_and_bring_it_back(
    start_server: Any, fakes: Callable[..., FakeUpstream]
) -> None:
    sick, steady = fakes("ok", "sick"), fakes("ok", "steady")
    sick.health_status = 503
    proxy = start_proxy(
        start_server,
        [upstream("sick", sick.url), upstream("steady", steady.url, health_check=False)],
        UPSTREAM_PROBE_INTERVAL="0.2",
        UPSTREAM_COOLDOWN_FAILURES="2",
        UPSTREAM_COOLDOWN_PERIOD="1",
    )
    # No client request at all: the probes alone find it sick.
    assert wait_for(lambda: health(proxy)["sick"]["state"] == "cooling")
    row = health(proxy)["sick"]
    assert row["last_error"] == "health probe: HTTP 503"
    assert row["counters"]["probes_failed"] >= 2
    assert health(proxy)["steady"]["counters"]["probes_ok"] == 0  # health_check: false
    assert chat(proxy, "m").headers["x-upstream"] == "steady"
    assert sick.completions() == []

    sick.health_status = 200
    assert wait_for(lambda: health(proxy)["sick"]["state"] == "healthy")
    assert health(proxy)["sick"]["counters"]["probes_ok"] >= 1
    assert chat(proxy, "m").headers["x-upstream"] == "sick"


def test_health_is_503_when_no_upstream_can_be_tried(start_server: Any) -> None:
    proxy = start_proxy(
        start_server,
        [upstream("dead", closed_port_url())],
        UPSTREAM_COOLDOWN_FAILURES="1",
        UPSTREAM_COOLDOWN_PERIOD="30",
    )
    assert httpx.get(proxy.url + "/health").status_code == 200
    assert chat(proxy, "m").status_code == 502
    response = httpx.get(proxy.url + "/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    refused = chat(proxy, "m")
    assert refused.status_code == 503
    assert "dead: skipped: cooling down for another" in refused.json()["error"]["message"]


def test_replicas_share_the_load_by_fewest_requests_in_flight(
    start_server: Any, fakes: Callable[..., FakeUpstream]
) -> None:
    a, b = fakes("slow", "a"), fakes("slow", "b")  # each holds a request for 0.6 s
    proxy = start_proxy(start_server, [{"name": "pool", "replicas": [upstream("a", a.url), upstream("b", b.url)]}])
    served: list[str] = []

    def one() -> None:
        served.append(chat(proxy, "m").headers["x-upstream"])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # each arrives while the earlier ones are still in flight
    for thread in threads:
        thread.join(30)
    assert sorted(served) == ["a", "a", "b", "b"]
    assert (len(a.completions()), len(b.completions())) == (2, 2)


def test_a_failed_replica_falls_back_to_its_sibling_before_the_next_tier(
    start_server: Any, fakes: Callable[..., FakeUpstream]
) -> None:
    sibling, last = fakes("ok", "sibling"), fakes("ok", "last")
    proxy = start_proxy(
        start_server,
        {
            "upstreams": [
                {"name": "pool", "replicas": [upstream("broken", closed_port_url()), upstream("sibling", sibling.url)]},
                upstream("last", last.url),
            ],
            "aliases": {"m": ["pool", "last"]},
        },
    )
    for _ in range(3):
        response = chat(proxy, "m")
        assert response.status_code == 200 and response.headers["x-upstream"] == "sibling"
    assert health(proxy)["broken"]["counters"]["failures"] >= 1
    assert last.completions() == []
