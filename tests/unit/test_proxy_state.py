"""Narrow unit tests of the cooldown circuit and replica choice, on a clock the test moves."""

from __future__ import annotations

import pytest

from spaceserve.base.errors import ModelNotFound
from spaceserve.proxy.config import parse_proxy_config
from spaceserve.proxy.state import CooldownPolicy, UpstreamPool, UpstreamState

from ..support.clock import Clock


def pool(clock: Clock, policy: CooldownPolicy | None = None) -> UpstreamPool:
    raw = {
        "upstreams": [
            {"name": "solo", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "SOLO_KEY"},
            {
                "name": "group",
                "replicas": [
                    {"name": "r1", "base_url": "http://127.0.0.1:9/v1"},
                    {"name": "r2", "base_url": "http://127.0.0.1:9/v1"},
                ],
            },
        ],
        "aliases": {"m": ["solo", "group"]},
    }
    config = parse_proxy_config(raw, {"SOLO_KEY": "sk-solo"})
    return UpstreamPool(config, policy or CooldownPolicy(failures=2, window=10, period=5), clock)


def fail_once(state: UpstreamState, reason: str = "HTTP 500") -> None:
    state.acquire()
    state.record_failure(reason, code="http_500")
    state.release()


def test_k_failures_within_the_window_open_the_circuit() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    fail_once(solo)
    assert solo.status() == "healthy"
    clock.now += 1
    fail_once(solo)
    assert solo.status() == "cooling"
    assert "cooling down for another 5.0s (HTTP 500)" in (solo.unavailable_reason() or "")


def test_failures_spread_wider_than_the_window_do_not() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    fail_once(solo)
    clock.now += 11
    fail_once(solo)
    assert solo.status() == "healthy"


def test_half_open_lets_exactly_one_trial_through_and_success_closes() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    fail_once(solo)
    fail_once(solo)
    clock.now += 5
    assert solo.status() == "half-open"
    assert solo.unavailable_reason() is None
    solo.acquire()
    assert solo.unavailable_reason() == "skipped: cooling down, a trial request is in flight"
    solo.record_success()
    solo.release()
    assert solo.status() == "healthy"
    fail_once(solo)  # the failure count started over
    assert solo.status() == "healthy"


def test_a_failed_trial_opens_the_circuit_again() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    fail_once(solo)
    fail_once(solo)
    clock.now += 6
    fail_once(solo, "connection refused")
    assert solo.status() == "cooling"
    assert solo.available_in() == pytest.approx(5)


def test_a_misconfigured_upstream_cools_down_at_once_and_again_after_a_failed_trial() -> None:
    clock = Clock()
    solo = pool(clock, CooldownPolicy(failures=100, period=5)).states["solo"]
    solo.acquire()
    solo.record_failure("HTTP 401: the upstream refused the proxy's key", code="auth", cooldown="now")
    solo.release()
    assert solo.status() == "cooling"
    assert solo.available_in() == pytest.approx(5)
    assert solo.last_error == "HTTP 401: the upstream refused the proxy's key"
    clock.now += 5
    assert solo.status() == "half-open"
    solo.acquire()
    solo.record_failure("HTTP 401: the upstream refused the proxy's key", code="auth", cooldown="now")
    solo.release()
    assert solo.status() == "cooling" and solo.available_in() == pytest.approx(5)


def test_a_request_too_long_for_an_upstream_leaves_its_circuit_alone() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]  # two failures open the circuit
    for _ in range(3):
        solo.acquire()
        solo.record_failure("too long for its context", code="context_length", cooldown="none")
        solo.release()
    assert solo.status() == "healthy" and solo.last_error is None
    assert solo.counters["failures"] == 3  # still counted, under its own reason in the metrics
    fail_once(solo)
    fail_once(solo)
    clock.now += 5  # half-open: a too-long answer proves it answers again
    solo.acquire()
    solo.record_failure("too long for its context", code="context_length", cooldown="none")
    solo.release()
    assert solo.status() == "healthy"


def test_a_trial_abandoned_by_its_client_lets_the_next_request_try() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    fail_once(solo)
    fail_once(solo)
    clock.now += 5
    solo.acquire()
    solo.release()  # cancelled: neither success nor failure
    assert solo.unavailable_reason() is None


def test_retry_after_is_honoured_and_capped() -> None:
    clock = Clock()
    states = pool(clock, CooldownPolicy(failures=100, retry_after_max=60)).states
    solo = states["solo"]
    solo.acquire()
    solo.record_failure("HTTP 429", retry_after=30, code="http_429")
    solo.release()
    assert solo.status() == "retry-after"
    clock.now += 30
    assert solo.status() == "healthy"
    solo.record_failure("HTTP 429", retry_after=86400, code="http_429")
    assert solo.available_in() == pytest.approx(60)


def test_health_probes_feed_the_same_circuit() -> None:
    clock = Clock()
    solo = pool(clock).states["solo"]
    solo.record_probe(False, "health probe: HTTP 503")
    solo.record_probe(False, "health probe: HTTP 503")
    assert solo.status() == "cooling"
    solo.record_probe(True)  # healthy /health does not cut a cooldown short ...
    assert solo.status() == "cooling"
    clock.now += 5
    solo.record_probe(True)  # ... but ends it once it has run its course
    assert solo.status() == "healthy"
    assert solo.counters["probes_ok"] == 2 and solo.counters["probes_failed"] == 2


def test_replicas_by_fewest_in_flight_then_longest_idle() -> None:
    clock = Clock()
    upstreams = pool(clock)
    group = upstreams.chain("m")[1]
    first = upstreams.pick(group, set())
    assert first is not None
    first.acquire()
    second = upstreams.pick(group, set())
    assert second is not None and second is not first
    second.acquire()
    clock.now += 1
    first.release()
    second.release()
    # Both idle now: the turn goes to the one picked longest ago.
    assert upstreams.pick(group, set()) is first
    assert upstreams.pick(group, {first.name}) is second
    assert upstreams.pick(group, {first.name, second.name}) is None


def test_unknown_model_names_the_aliases() -> None:
    with pytest.raises(ModelNotFound, match="this proxy serves 'm'"):
        pool(Clock()).chain("gpt-4")


def test_keys_are_scrubbed_and_never_shown() -> None:
    solo = pool(Clock()).states["solo"]
    assert solo.auth_headers() == {"Authorization": "Bearer sk-solo"}
    assert solo.scrub("Incorrect API key provided: sk-solo.") == "Incorrect API key provided: <upstream key>."
    assert "sk-solo" not in repr(solo)
    assert "sk-solo" not in str(solo.health(0, 0))


class Recorded:
    """Stands in for the Prometheus hooks: remembers every event it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def attempt(self, upstream: str) -> None:
        self.events.append(("attempt", upstream))

    def failure(self, upstream: str, reason: str) -> None:
        self.events.append(("failure", upstream, reason))

    def fallback(self, from_upstream: str, to_upstream: str) -> None:
        self.events.append(("fallback", from_upstream, to_upstream))


def test_events_reach_the_hooks_in_the_same_call_that_counts_them() -> None:
    clock, heard = Clock(), Recorded()
    raw = {"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}]}
    solo = UpstreamPool(parse_proxy_config(raw, {}), CooldownPolicy(), clock, events=heard).states["a"]
    fail_once(solo)
    solo.record_fallback("b")
    assert heard.events == [("attempt", "a"), ("failure", "a", "http_500"), ("fallback", "a", "b")]
    assert (solo.counters["attempts"], solo.counters["failures"], solo.counters["fallbacks"]) == (1, 1, 1)


def test_pool_status_and_cooldowns_follow_the_circuits() -> None:
    clock = Clock()
    upstreams = pool(clock)
    assert upstreams.status() == ("ok", None)
    assert upstreams.cooldowns() == {"solo": 0.0, "r1": 0.0, "r2": 0.0}
    fail_once(upstreams.states["solo"])
    fail_once(upstreams.states["solo"])
    status, reason = upstreams.status()
    assert status == "degraded" and reason == "1 of 3 upstreams not healthy: solo"
    assert upstreams.cooldowns()["solo"] == 5
    assert upstreams.states["solo"].health(clock(), 0)["cooldown_seconds"] == 5
    for name in ("r1", "r2"):
        fail_once(upstreams.states[name])
        fail_once(upstreams.states[name])
    assert upstreams.status()[0] == "unavailable"
    clock.now += 5  # every cooldown has run out: half-open, each may take one trial
    assert upstreams.status()[0] == "degraded"
    assert upstreams.cooldowns() == {"solo": 0.0, "r1": 0.0, "r2": 0.0}
