"""What a simulated device does with what it receives, as pure rules that follow PROTOCOL.md and edge_client/client.py:
train, re-send or wait when a global model comes; give up a training when a newer model comes. The run_end rule is
edge_client/run_end_watch.py, shared with the edge client.

The device (device.py) only applies them; tests/unit/test_simulator.py drives them directly."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ModelAction(Enum):
    TRAIN = "train"          # a round this device has not trained, and it is asked
    RESEND = "resend"        # the round it last sent, same weights: the coordinator or broker restarted
    NOT_ASKED = "not_asked"  # not in the round's cohort: wait for the next model
    IGNORE = "ignore"        # an older round than the one it last sent


@dataclass(frozen=True)
class SentRecord:
    """The last update a device published: enough to make it again (its payload is rebuilt, not kept)."""

    round: int
    weights_sha256: str
    train_s: float


def model_action(client_id: str, round_: int, weights_sha256: str, cohort: list[str] | None,
                 last: SentRecord | None) -> ModelAction:
    """The device's answer to a global model of `round_` (edge_client.client.EdgeClient._handle_model)."""
    if last is None or round_ > last.round or (round_ == last.round and weights_sha256 != last.weights_sha256):
        return ModelAction.TRAIN if cohort is None or client_id in cohort else ModelAction.NOT_ASKED
    if round_ == last.round:
        return ModelAction.RESEND
    return ModelAction.IGNORE


def abandons_training(training_round: int, new_round: int, mode: str) -> bool:
    """A newer model came while training `training_round`: in sync mode the update would be late, so the device drops
    it and trains the newer one; in async mode it finishes and sends (a stale update still counts)."""
    return mode == "sync" and new_round > training_round
