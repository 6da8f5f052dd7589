"""Who holds a client id, read from a retained status: only an online status of another process counts."""

from __future__ import annotations

from edge_client.client import INSTANCE
from edge_client.id_claim import Holder, other_holder
from federation.protocol.messages import ClientStatus


def status(state: str, **device: object) -> bytes:
    return ClientStatus(run="r", round=0, sender="dev-1", status=state, software="t", num_examples=1,
                        device=device).encode()


def test_another_online_process_holds_the_id() -> None:
    held = other_holder(status("online", host="pi-1", pid=42, instance="other"), 1 << 20)
    assert held == Holder("pi-1", "42", "other") and str(held) == "host pi-1, pid 42"


def test_offline_cleared_garbage_or_this_process_hold_nothing() -> None:
    assert other_holder(status("offline", host="pi-1", pid=42, instance="other"), 1 << 20) is None
    assert other_holder(b"", 1 << 20) is None
    assert other_holder(b"\x00not msgpack", 1 << 20) is None
    assert other_holder(status("online", host="me", pid=1, instance=INSTANCE), 1 << 20) is None


def test_names_from_a_status_are_capped() -> None:
    held = other_holder(status("online", host="h" * 10_000, pid="9" * 100, instance="i" * 1000), 1 << 20)
    assert held is not None and (len(held.host), len(held.pid), len(held.instance)) == (64, 16, 64)
