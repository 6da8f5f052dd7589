"""What the coordinator's inbox holds on relay topics, turned into typed events: a site relay's presence, or a
site's partial aggregate decoded and validated with the rules of a direct update (coordinator.intake's envelope
and tensor checks, then the round state machine's per-device checks for every device the partial lists)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.drops import DropLog
from coordinator.rounds import Rounds
from coordinator.sites import SiteRoster
from federation.protocol.chunked_transfer import ChunkedReceiver, base_topic
from federation.protocol.codec import DecodeError, TensorSpec, check_tensors, wire_repr
from federation.protocol.messages import Message, check_finite, decode_message
from federation.protocol.relay_messages import RELAY_STATUS_MAX_BYTES, PartialUpdate, RelayStatus
from federation.protocol.topics import RunTopics, check_level

log = logging.getLogger(__name__)

PARTIAL_SLACK_BYTES = 8 * 1024 * 1024   # a partial's client list on top of an update's size: ~70 bytes per device


@dataclass(frozen=True)
class SiteStatusReceived:
    """A relay's status (None: its retained status was cleared)."""

    site: str
    status: RelayStatus | None


@dataclass(frozen=True)
class PartialReceived:
    """A site's partial aggregate for the open round, every listed device checked like a direct update."""

    site: str
    partial: PartialUpdate
    size: int


RelayEvent = SiteStatusReceived | PartialReceived


class RelayIntake:
    """Decodes and validates messages on relay/<site>/... topics, recording every drop in `drops`.

    `unsupported()` says why the run's aggregation can't take a pre-aggregated partial ("" when it can: FedAvg
    without clipping or differential privacy, in sync mode)."""

    def __init__(self, topics: RunTopics, rounds: Rounds, drops: DropLog, sites: SiteRoster, specs: list[TensorSpec],
                 receiver: ChunkedReceiver, unsupported: Callable[[], str]) -> None:
        self.topics = topics
        self.rounds = rounds
        self.drops = drops
        self.sites = sites
        self.specs = specs
        self.receiver = receiver
        self.unsupported = unsupported

    def decode(self, item_topic: str, payload: bytes) -> RelayEvent | None:
        site = self.topics.site_of(base_topic(item_topic)[0])
        if site is None:
            return None
        sender = f"site {site}"
        try:
            check_level(site, "site")
        except ValueError:
            self.drops.record(site, "bad_client_id", "a site name outside the protocol's characters")
            return None
        try:
            if item_topic == self.topics.relay_status(site):
                return self._status(site, payload)
            return self._partial(site, item_topic, payload)
        except DecodeError as exc:
            self.drops.record(sender, exc.reason, str(exc))
            return None

    def _status(self, site: str, payload: bytes) -> SiteStatusReceived:
        if not payload:
            return SiteStatusReceived(site, None)
        status = decode_message(payload, RELAY_STATUS_MAX_BYTES)
        if not isinstance(status, RelayStatus):
            raise DecodeError(f"{status.TYPE} message on a relay status topic", "wrong_type")
        if status.sender != site:
            raise DecodeError(f"relay status names sender {wire_repr(status.sender)}", "sender_mismatch")
        if status.run != self.rounds.run:
            raise DecodeError(f"relay status for run {wire_repr(status.run)}", "wrong_run")
        return SiteStatusReceived(site, status)

    def _check_envelope(self, site: str, message: Message) -> None:
        if message.run != self.rounds.run:
            raise DecodeError(f"{message.TYPE} for run {wire_repr(message.run)}", "wrong_run")

    def _partial(self, site: str, topic: str, payload: bytes) -> PartialReceived | None:
        received = self.receiver.receive(topic, payload, expected_sender=site,
                                         check=lambda _, message: self._check_envelope(site, message))
        if received is None:
            return None   # a chunk of a partial still being reassembled
        partial = received.message
        if not isinstance(partial, PartialUpdate):
            raise DecodeError(f"{partial.TYPE} message on a relay update topic", "wrong_type")
        for reason, count in {**partial.rejected, **partial.ignored}.items():
            if count:
                self.drops.record(f"site {site}", reason, f"dropped by the relay of site {site}", count)
        if why := self.unsupported():
            raise DecodeError(f"partial of {len(partial.clients)} devices: {why}", "relay_unsupported")
        check_tensors(partial.tensors, self.specs)
        check_finite(partial.tensors)
        if self._devices_pass(site, partial):
            return PartialReceived(site, partial, received.size)
        return None

    def _devices_pass(self, site: str, partial: PartialUpdate) -> bool:
        """Every listed device passes the checks of a direct update (open round, cohort, first update) and belongs
        to this site; else each is counted under its own reason (a partial can't be split, so one refused device
        refuses the others too: counted as partial_conflict)."""
        drops: dict[str, tuple[str, str]] = {}
        for client in partial.clients:
            holder = self.sites.site_of(client.id)
            if holder not in (site, None) or holder is None and client.id in self.rounds.online:
                drops[client.id] = ("id_clash", f"site {site} sent an update of {client.id}, which "
                                                f"{'site ' + holder if holder else 'a direct device'} holds: device "
                                                "ids must be unique across the fleet")
                continue
            drop = self.rounds.check(client.id, "update", client.id, partial.run, partial.round)
            if drop is not None:
                drops[client.id] = (drop.reason, f"in the partial of site {site}: {drop.detail}")
        if not drops:
            return True
        for client in partial.clients:
            reason, detail = drops.get(client.id, ("partial_conflict", f"in the partial of site {site} with "
                                                   f"{len(drops)} refused devices; a site's mean can't be split"))
            self.drops.record(client.id, reason, detail)
        return False
