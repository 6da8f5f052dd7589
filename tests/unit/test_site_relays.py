"""Site relays (issue 16) without a broker: the relay messages on the wire, relayed FedAvg against flat FedAvg
(property-based), the coordinator's roster of sites, and its per-device checks of a site's partial."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import ClientResult, FedAvg
from coordinator.cohort import SamplingRule
from coordinator.drops import DropLog
from coordinator.quorum import QuorumRule
from coordinator.relay_intake import PartialReceived, RelayIntake, SiteStatusReceived
from coordinator.rounds import Rounds
from coordinator.sites import SiteRoster
from federation.protocol.chunked_transfer import ChunkedReceiver, outgoing_messages
from federation.protocol.codec import DecodeError, TensorSpec
from federation.protocol.messages import decode_message
from federation.protocol.relay_messages import PartialUpdate, RelayStatus, SiteClient, SiteDevice
from federation.protocol.topics import RunTopics

SHAPES = [(3, 2), (4,)]
SPECS = [TensorSpec(f"t{i}", "float32", shape) for i, shape in enumerate(SHAPES)]
TOPICS = RunTopics("fedmq", "run1")


def _partial(clients: dict[str, int], round_: int = 1, site: str = "s1", value: float = 0.5) -> PartialUpdate:
    return PartialUpdate(run="run1", round=round_, sender=site,
                         clients=[SiteClient(c, n) for c, n in clients.items()], num_examples=sum(clients.values()),
                         metrics={"train_time_s": 1.5},
                         tensors=[(s.name, np.full(s.shape, value, np.float32)) for s in SPECS])


# ---- the wire ---------------------------------------------------------------------------------------------------

def test_relay_status_and_partial_update_round_trip_through_decode_message() -> None:
    status = RelayStatus(run="run1", round=3, sender="s1", software="fedmq relay",
                         devices=[SiteDevice("a1", 600), SiteDevice("a2", 10, "input shape differs")])
    back = decode_message(status.encode())
    assert isinstance(back, RelayStatus) and back.devices == status.devices and back.status == "online"
    partial = _partial({"a1": 600, "a2": 10})
    partial.rejected = {"bad_tensors": 2}
    got = decode_message(partial.encode())
    assert isinstance(got, PartialUpdate)
    assert got.clients == partial.clients and got.num_examples == 610 and got.rejected == {"bad_tensors": 2}
    assert got.metrics == {"train_time_s": 1.5} and got.part == 0
    assert [(n, t.tolist()) for n, t in got.tensors] == [(n, t.tolist()) for n, t in partial.tensors]


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.update(num_examples=999), "bad_num_examples"),          # not the sum of its clients'
    (lambda m: m["clients"].append(dict(m["clients"][0])), "malformed"),  # a device listed twice
    (lambda m: m.update(clients=[]), "malformed"),
    (lambda m: m["clients"][0].update(id="bad/id"), "bad_client_id"),
    (lambda m: m["clients"][0].update(num_examples=0), "bad_num_examples"),
    (lambda m: m.update(metrics={"train_time_s": "slow"}), "bad_metrics"),
    (lambda m: m["tensors"][0].update(encoding="float16", data=b"\0" * 12), "wrong_encoding"),
])
def test_a_malformed_partial_update_is_refused_with_its_reason(change, reason) -> None:
    import msgpack

    raw = msgpack.unpackb(_partial({"a1": 5, "a2": 7}).encode(), raw=False)
    change(raw)
    with pytest.raises(DecodeError) as err:
        decode_message(msgpack.packb(raw, use_bin_type=True))
    assert err.value.reason == reason


# ---- relayed FedAvg equals flat FedAvg ---------------------------------------------------------------------------

def _fedavg(global_weights: list[np.ndarray], results: list[ClientResult]) -> list[np.ndarray]:
    agg = FedAvg()
    agg.begin(global_weights)
    for result in results:
        agg.add(result)
    return agg.result()


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[np.ndarray], list[tuple[int, list[np.ndarray]]], list[int]]:
    """Global weights, devices (num_examples, float32 weights) and each device's site (-1: direct)."""
    elements = st.floats(-100, 100, width=32)
    global_weights = [draw(hnp.arrays(np.float32, shape, elements=elements)) for shape in SHAPES]
    count = draw(st.integers(1, 12))
    devices = [(draw(st.integers(1, 10**6)), [draw(hnp.arrays(np.float32, s, elements=elements)) for s in SHAPES])
               for _ in range(count)]
    sites = [draw(st.integers(-1, 3)) for _ in range(count)]
    return global_weights, devices, sites


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_relayed_fedavg_equals_flat_fedavg_within_1e_6_relative(fleet) -> None:
    """Each site's relay streams its devices into one FedAvg and sends the float32 mean with the total weight; the
    coordinator adds n_site x mean_site beside the direct devices. The same result as every update at the centre."""
    global_weights, devices, sites = fleet
    flat = _fedavg(global_weights, [ClientResult(f"c{i}", n, w) for i, (n, w) in enumerate(devices)])
    central: list[ClientResult] = []
    for site in sorted(set(sites)):
        members = [(f"c{i}", n, w) for i, ((n, w), s) in enumerate(zip(devices, sites)) if s == site]
        if site < 0:
            central += [ClientResult(c, n, w) for c, n, w in members]
            continue
        mean = _fedavg(global_weights, [ClientResult(c, n, w) for c, n, w in members])   # the relay's
        assert all(m.dtype == np.float32 for m in mean)   # what travels: the model's dtype
        central.append(ClientResult(f"site {site}", sum(n for _, n, _ in members), mean))
    relayed = _fedavg(global_weights, central)
    for a, b in zip(relayed, flat):
        scale = max(float(np.linalg.norm(b.astype(np.float64))), 1e-30)
        assert float(np.linalg.norm(a.astype(np.float64) - b)) / scale <= 1e-6


def test_a_site_mean_of_delta_updates_is_the_same_as_of_whole_weights() -> None:
    """A compressed uplink: the relay adds deltas; its mean (global weights added back) is the whole-weights mean."""
    g = [np.full(s.shape, 2.0, np.float32) for s in SPECS]
    whole = [[np.full(s.shape, 2.0 + k, np.float32) for s in SPECS] for k in (1, 3)]
    as_deltas = _fedavg(g, [ClientResult("a", 1, deltas=[w - x for w, x in zip(whole[0], g)]),
                            ClientResult("b", 3, deltas=[w - x for w, x in zip(whole[1], g)])])
    as_weights = _fedavg(g, [ClientResult("a", 1, whole[0]), ClientResult("b", 3, whole[1])])
    assert all(np.allclose(x, y) and np.allclose(x, 4.5) for x, y in zip(as_deltas, as_weights))


# ---- the coordinator's roster of sites ---------------------------------------------------------------------------

def _status(site: str, *devices: str, status: str = "online", error: str = "") -> RelayStatus:
    return RelayStatus(run="run1", round=0, sender=site, status=status,
                       devices=[SiteDevice(d, 10) for d in devices], error=error)


def test_a_relay_status_is_its_devices_births_and_its_will_their_deaths() -> None:
    roster = SiteRoster()
    change = roster.apply("s1", _status("s1", "a1", "a2"), set())
    assert change.online == {"a1": "", "a2": ""} and not change.offline and roster.summary() == {"s1": 2}
    change = roster.apply("s1", _status("s1", "a2"), set())          # a1's will at the site
    assert change.online == {} and change.offline == {"a1"} and not change.relay_went_offline
    change = roster.apply("s1", _status("s1", status="offline"), set())   # the relay's will
    assert change.offline == {"a2"} and change.relay_went_offline and roster.summary() == {}
    assert roster.site_of("a2") is None


def test_a_device_id_held_elsewhere_is_refused_as_a_clash() -> None:
    roster = SiteRoster()
    roster.apply("s1", _status("s1", "a1"), set())
    change = roster.apply("s2", _status("s2", "a1", "b1", "d1"), direct_online={"d1"})
    assert change.clashes == {"a1": "site s1", "d1": "a direct device"}
    assert change.online == {"b1": ""} and roster.site_of("a1") == "s1"


# ---- the coordinator's checks of a partial -----------------------------------------------------------------------

def _intake(cohort: set[str]) -> tuple[RelayIntake, Rounds, DropLog, SiteRoster]:
    rounds = Rounds(QuorumRule(1, 1.0, 60.0), SamplingRule(), "run1")
    drops, roster = DropLog(), SiteRoster()
    for client in cohort:
        rounds.client_online(client)
    roster.apply("s1", _status("s1", *sorted(c for c in cohort if c.startswith("a"))), set())
    rounds.open(1, 0.0, frozenset(cohort))
    intake = RelayIntake(TOPICS, rounds, drops, roster, SPECS, ChunkedReceiver(10**6), lambda: "")
    return intake, rounds, drops, roster


def _send(intake: RelayIntake, partial: PartialUpdate, chunk_bytes: int = 0) -> list[object]:
    messages = outgoing_messages(TOPICS.relay_update(partial.sender), partial.encode(), chunk_bytes, "run1",
                                 partial.round, partial.sender)
    return [intake.decode(topic, payload) for topic, payload in messages]


def test_a_partial_is_accepted_when_every_listed_device_passes_a_direct_updates_checks() -> None:
    intake, rounds, drops, _ = _intake({"a1", "a2", "d1"})
    events = _send(intake, _partial({"a1": 5, "a2": 7}), chunk_bytes=1024)   # chunked, like a large model's
    assert all(e is None for e in events[:-1]) and isinstance(events[-1], PartialReceived)
    assert drops.take() == ({}, {})


def test_one_refused_device_refuses_the_whole_partial_each_device_counted() -> None:
    intake, rounds, drops, _ = _intake({"a1", "a2", "d1"})
    rounds.accept("a1")                                # a1 already counted (e.g. it sent directly)
    assert _send(intake, _partial({"a1": 5, "a2": 7})) == [None]
    assert drops.take() == ({"partial_conflict": 1}, {"duplicate": 1})
    assert _send(intake, _partial({"x9": 5})) == [None]   # not in the cohort
    assert _send(intake, _partial({"d1": 5})) == [None]   # a direct device's id
    assert drops.take() == ({"not_in_cohort": 1, "id_clash": 1}, {})


def test_a_partial_for_a_closed_round_counts_each_device_late_and_an_unsupported_rule_refuses_it() -> None:
    intake, rounds, drops, _ = _intake({"a1", "a2"})
    rounds.close(1.0)
    assert _send(intake, _partial({"a1": 5, "a2": 7})) == [None]
    assert drops.take() == ({}, {"late": 2})
    intake.unsupported = lambda: "the median rule needs every device's own update"
    assert _send(intake, _partial({"a1": 5}, round_=2)) == [None]
    assert drops.take()[0] == {"relay_unsupported": 1}


def test_relay_statuses_decode_into_site_events() -> None:
    intake, *_ = _intake({"a1"})
    event = intake.decode(TOPICS.relay_status("s2"), _status("s2", "b1").encode())
    assert isinstance(event, SiteStatusReceived) and event.status is not None and event.status.devices[0].id == "b1"
    assert intake.decode(TOPICS.relay_status("s2"), b"") == SiteStatusReceived("s2", None)
    assert intake.decode(TOPICS.relay_status("s3"), _status("s2", "b1").encode()) is None   # sender mismatch
