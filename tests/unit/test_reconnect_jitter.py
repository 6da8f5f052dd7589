"""Reconnect jitter (issue 15): a fleet dropped by a broker restart retries spread out, not on paho's common beat.

Pure delays, and MqttLink handing them to paho before each retry (no broker: paho's callbacks are called directly)."""

from __future__ import annotations

import random
import statistics

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from federation.transport.mqtt_link import BrokerAddress, MqttLink
from federation.transport.reconnect_jitter import FLOOR_S, ReconnectJitter, jittered_delay


def test_delays_stay_in_a_window_that_doubles_up_to_the_cap() -> None:
    rng = random.Random(1)
    for attempt, window in [(0, 1.0), (1, 2.0), (2, 4.0), (4, 16.0), (5, 30.0), (60, 30.0)]:
        delays = [jittered_delay(attempt, rng, first_s=1.0, cap_s=30.0) for _ in range(2000)]
        assert min(delays) >= FLOOR_S and max(delays) <= window
        assert max(delays) > 0.9 * window and min(delays) < FLOOR_S + 0.05 * window, "the whole window is used"


def test_a_fleet_of_devices_does_not_retry_together() -> None:
    """1,000 devices dropped at once: their first retries spread over the first window (paho alone: all at 1 s)."""
    first = [ReconnectJitter(rng=random.Random(seed)).next_delay() for seed in range(1000)]
    assert len({round(d, 6) for d in first}) > 990
    assert statistics.pstdev(first) > 0.2
    in_100ms = max(sum(1 for d in first if k / 10 <= d < (k + 1) / 10) for k in range(10))
    assert in_100ms < 200, "no tenth of a second sees more than a fifth of the fleet"


def test_attempts_count_until_a_connect_succeeds() -> None:
    jitter = ReconnectJitter(first_s=2.0, cap_s=5.0, rng=random.Random(3))
    assert [jitter.next_delay() <= w for w in (2.0, 4.0, 5.0, 5.0)] == [True] * 4
    assert jitter.attempt == 4
    jitter.connected()
    assert jitter.attempt == 0 and jitter.next_delay() <= 2.0
    with pytest.raises(ValueError, match="first_s <= cap_s"):
        ReconnectJitter(first_s=10.0, cap_s=5.0)


SUCCESS = ReasonCode(PacketTypes.CONNACK, identifier=0)


def test_the_link_sets_a_fresh_random_delay_before_each_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    jitter = ReconnectJitter(rng=random.Random(7))
    link = MqttLink("fedmq-client-x", BrokerAddress(), [], lambda t, p, r: None, reconnect_jitter=jitter)
    asked: list[tuple[float, float]] = []
    monkeypatch.setattr(link._client, "reconnect_delay_set",
                        lambda min_delay, max_delay: asked.append((min_delay, max_delay)))
    monkeypatch.setattr(link, "_report_failure", lambda: None)
    link._handle_connect_fail(link._client, None)          # broker down: attempt 0, then 1
    link._handle_connect_fail(link._client, None)
    assert [a[1] for a in asked] == [30.0, 30.0] and asked[0][0] <= 1.0 and asked[1][0] <= 2.0
    assert asked[0][0] != asked[1][0]
    link._handle_connect(link._client, None, None, SUCCESS, None)
    assert jitter.attempt == 0
    link._handle_disconnect(link._client, None, None, SUCCESS, None)
    assert len(asked) == 3 and asked[2][0] <= 1.0, "a drop after a connect starts from the first window"
    link._stopping = True
    link._handle_disconnect(link._client, None, None, SUCCESS, None)
    assert len(asked) == 3, "stopping: no retry to plan"


def test_without_jitter_paho_keeps_its_own_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    link = MqttLink("fedmq-coordinator-x", BrokerAddress(), [], lambda t, p, r: None)
    asked: list[object] = []
    monkeypatch.setattr(link._client, "reconnect_delay_set", lambda **kw: asked.append(kw))
    monkeypatch.setattr(link, "_report_failure", lambda: None)
    link._handle_connect_fail(link._client, None)
    assert asked == []
