"""The site relay's two messages (PROTOCOL.md, "Site relays"): `relay_status`, a site's presence summary, and
`partial_update`, a site's pre-aggregated FedAvg (the weighted mean of its devices' updates and their counts).

Importing this module adds both types to federation.protocol.messages.decode_message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from federation.protocol.codec import DecodeError, wire_repr
from federation.protocol.encodings import Encoded, WireTensor, decode_wire_tensors, wire_maps
from federation.protocol.messages import (
    CLIENT_STATUSES, MAX_NUM_EXAMPLES, Message, Update, _decode_update, _get, _optional_int, _require_map,
    register_message_type,
)
from federation.protocol.topics import check_level

RELAY_STATUS_MAX_BYTES = 8 * 1024 * 1024   # a relay_status lists every device of its site: ~60 bytes each
MAX_SITE_DEVICES = 65_536                  # devices one relay_status or partial_update may list
MAX_SITE_EXAMPLES = MAX_NUM_EXAMPLES * 1000  # a site's total num_examples


@dataclass(frozen=True)
class SiteDevice:
    """One device behind a relay: its id, its num_examples, and why it can't train the run's model ("" if it can)."""

    id: str
    num_examples: int
    error: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"id": self.id, "num_examples": self.num_examples}
        if self.error:
            wire["error"] = self.error
        return wire


@dataclass
class RelayStatus(Message):
    """A site relay's presence, retained on relay/<site>/status: online with its site's training devices online,
    or offline (its last will, or a clean exit). `error`: why the relay can't relay this run (e.g. async mode)."""

    TYPE: ClassVar[str] = "relay_status"
    status: str = "online"
    software: str = ""
    devices: list[SiteDevice] = field(default_factory=list)
    error: str = ""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "software": self.software,
                                "devices": [d.to_wire() for d in self.devices]}
        if self.error:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class SiteClient:
    """A device whose update a partial holds, and its weight."""

    id: str
    num_examples: int


@dataclass
class PartialUpdate(Message):
    """A site's FedAvg of one round: `tensors` = the weighted mean of its devices' (whole) weights, in the model's
    dtypes; `num_examples` = the sum of their counts; `clients` = who they are. `part`: 0 for the site's first
    partial of the round, 1, 2... for follow-ups (updates that came after it). `rejected` and `ignored`: what the
    relay dropped since its last partial, by reason (as round_metrics counts them)."""

    TYPE: ClassVar[str] = "partial_update"
    clients: list[SiteClient] = field(default_factory=list)
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    tensors: list[tuple[str, WireTensor]] = field(default_factory=list)
    part: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"clients": [{"id": c.id, "num_examples": c.num_examples} for c in self.clients],
                                "num_examples": self.num_examples, "metrics": self.metrics,
                                "tensors": wire_maps(self.tensors), "part": self.part}
        if self.rejected:
            body["rejected"] = self.rejected
        if self.ignored:
            body["ignored"] = self.ignored
        return body


def _device_id(value: Any, what: str) -> str:
    try:
        return check_level(value, "device id")
    except ValueError:
        raise DecodeError(f"{what}: device id {wire_repr(value)} is not a valid client id", "bad_client_id") from None


def _decode_relay_status(raw: dict[str, Any], env: dict[str, Any]) -> RelayStatus:
    what = "relay_status"
    status = _get(raw, "status", str, what)
    if status not in CLIENT_STATUSES:
        raise DecodeError(f"{what}: unknown status {wire_repr(status)}")
    listed = _get(raw, "devices", list, what)
    if len(listed) > MAX_SITE_DEVICES:
        raise DecodeError(f"{what}: {len(listed)} devices, at most {MAX_SITE_DEVICES}")
    devices, seen = [], set()
    for item in listed:
        m = _require_map(item, f"{what} device")
        device = SiteDevice(_device_id(m.get("id"), what), _optional_int(m, "num_examples", what),
                            m["error"][:500] if isinstance(m.get("error"), str) else "")
        if device.id in seen:
            raise DecodeError(f"{what}: device {device.id!r} listed twice")
        seen.add(device.id)
        devices.append(device)
    error = raw.get("error")
    return RelayStatus(**env, status=status, software=str(raw.get("software", ""))[:200], devices=devices,
                       error=error[:500] if isinstance(error, str) else "")


def _count_map(raw: dict[str, Any], key: str, what: str) -> dict[str, int]:
    m = _require_map(raw.get(key, {}), f"{what} {key}")
    if len(m) > 64 or not all(isinstance(k, str) and len(k) <= 64 and type(v) is int and v >= 0 for k, v in m.items()):
        raise DecodeError(f"{what}: {key} must map at most 64 reasons (str) to counts (int >= 0)")
    return dict(m)


def _decode_partial_update(raw: dict[str, Any], env: dict[str, Any]) -> PartialUpdate:
    what = "partial_update"
    listed = _get(raw, "clients", list, what)
    if not 1 <= len(listed) <= MAX_SITE_DEVICES:
        raise DecodeError(f"{what}: {len(listed)} clients, expected 1 to {MAX_SITE_DEVICES}")
    clients, seen = [], set()
    for item in listed:
        m = _require_map(item, f"{what} client")
        client = SiteClient(_device_id(m.get("id"), what), _get(m, "num_examples", int, what))
        if not 0 < client.num_examples <= MAX_NUM_EXAMPLES:
            raise DecodeError(f"{what}: client {client.id!r} num_examples {client.num_examples} is out of range "
                              f"(1..{MAX_NUM_EXAMPLES})", "bad_num_examples")
        if client.id in seen:
            raise DecodeError(f"{what}: client {client.id!r} listed twice")
        seen.add(client.id)
        clients.append(client)
    total = _get(raw, "num_examples", int, what)
    if total != sum(c.num_examples for c in clients):
        raise DecodeError(f"{what}: num_examples {total} is not the sum of its clients' "
                          f"({sum(c.num_examples for c in clients)})", "bad_num_examples")
    # The metrics map follows the update's rules (the same decoder checks it); num_examples is checked above.
    update: Update = _decode_update({"num_examples": 1, "metrics": raw.get("metrics", {}), "tensors": []}, env)
    tensors = decode_wire_tensors(raw.get("tensors"))
    if any(isinstance(t, Encoded) for _, t in tensors):
        raise DecodeError(f"{what}: encoded tensors; a site's mean travels raw, in the model's dtypes",
                          "wrong_encoding")
    part = _get(raw, "part", int, what) if "part" in raw else 0
    return PartialUpdate(**env, clients=clients, num_examples=total, metrics=update.metrics, tensors=tensors,
                         part=max(0, part), rejected=_count_map(raw, "rejected", what),
                         ignored=_count_map(raw, "ignored", what))


register_message_type(RelayStatus, _decode_relay_status)
register_message_type(PartialUpdate, _decode_partial_update)
