"""Tests for federation.protocol.topics: the topic tree of a run and the rules for topic levels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.protocol.topics import RunTopics, check_level

LEVEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
LEVELS = st.builds(lambda first, rest: first + rest,
                   st.sampled_from(LEVEL_CHARS[:62]), st.text(alphabet=LEVEL_CHARS, max_size=63))


def test_topic_names_for_a_run() -> None:
    t = RunTopics("fedmq", "demo")
    assert t.base == "fedmq/demo"
    assert t.global_model == "fedmq/demo/model/global"
    assert t.coordinator_state == "fedmq/demo/coordinator/state"
    assert t.run_end == "fedmq/demo/end"
    assert t.metrics == "fedmq/demo/metrics"
    assert t.client_of(t.metrics) is None, "the metrics topic is not a client's topic"
    assert t.updates_wildcard == "fedmq/demo/update/+"
    assert t.statuses_wildcard == "fedmq/demo/client/+/status"
    assert t.update("pi-01") == "fedmq/demo/update/pi-01"
    assert t.client_status("pi-01") == "fedmq/demo/client/pi-01/status"


def test_multi_level_prefix() -> None:
    t = RunTopics("lab/fedmq", "run_2")
    assert t.global_model == "lab/fedmq/run_2/model/global"
    assert t.client_of("lab/fedmq/run_2/update/c1") == "c1"


@pytest.mark.parametrize("prefix, run", [("fedmq", "a/b"), ("fedmq", "+"), ("fedmq", ""), ("fed/#", "demo"),
                                         ("", "demo"), ("fedmq/", "demo"), ("/fedmq", "demo")])
def test_run_topics_reject_bad_levels(prefix: str, run: str) -> None:
    with pytest.raises(ValueError, match="not usable in MQTT topics"):
        RunTopics(prefix, run)


def test_client_of_update_and_status_topics() -> None:
    t = RunTopics("fedmq", "demo")
    assert t.client_of("fedmq/demo/update/c1") == "c1"
    assert t.client_of("fedmq/demo/client/c_2.x/status") == "c_2.x"
    assert t.client_of(t.update("edge-7")) == "edge-7"
    assert t.client_of(t.client_status("edge-7")) == "edge-7"


@pytest.mark.parametrize("topic", [
    "fedmq/demo/model/global",
    "fedmq/demo/coordinator/state",
    "fedmq/demo/end",
    "fedmq/demo/update",
    "fedmq/demo/update/c1/extra",
    "fedmq/demo/client/c1",
    "fedmq/demo/client/c1/state",
    "fedmq/demo/client/c1/status/x",
    "fedmq/other/update/c1",              # another run
    "fedmq/demo2/update/c1",              # a run whose name starts like ours
    "fedmq/dem/update/c1",
    "other/demo/update/c1",
    "fedmq/demo",
    "fedmq/demoupdate/c1",
    "update/c1",
    "",
])
def test_client_of_returns_none_for_other_topics(topic: str) -> None:
    assert RunTopics("fedmq", "demo").client_of(topic) is None


@settings(max_examples=200, deadline=None)
@given(prefix=LEVELS, run=LEVELS, client=LEVELS)
def test_client_of_inverts_update_and_client_status(prefix: str, run: str, client: str) -> None:
    t = RunTopics(prefix, run)
    assert t.client_of(t.update(client)) == client
    assert t.client_of(t.client_status(client)) == client
    assert t.client_of(t.global_model) is None
    assert t.client_of(t.coordinator_state) is None
    assert t.client_of(t.run_end) is None


@pytest.mark.parametrize("value", ["a", "A9", "0", "client_01", "pi-4.local", "x" * 64, "a-", "a.b_c-d"])
def test_check_level_accepts(value: str) -> None:
    assert check_level(value, "client id") == value


@pytest.mark.parametrize("value", ["", "a/b", "+", "#", "a+", "a#", "has space", " a", "a ", "x" * 65,
                                   "-a", ".a", "_a", "é", "a\nb", "a\n", "demo\n", "a\x00", "a\tb", None, 5, b"abc"])
def test_check_level_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="client id") as info:
        check_level(value, "client id")  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=70))
def test_check_level_never_lets_topic_syntax_through(value: str) -> None:
    try:
        check_level(value, "run id")
    except ValueError:
        return
    assert 1 <= len(value) <= 64
    assert not set(value) & set("/+#\x00 ")
    assert set(value) <= set(LEVEL_CHARS)
