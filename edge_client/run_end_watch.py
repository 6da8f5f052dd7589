"""What a device makes of the run's end (PROTOCOL.md step 8), for the edge client and the simulator alike.

A run_end counts only while the coordinator is offline or ending (else it is a forgery), and a retained one only after
this run's model was seen (else it is an earlier run's end). A retained one refused because the coordinator's last
known state said it was running is held, and looked at again when a newer state comes: after a reconnect the broker
delivers the retained run_end before the retained state, so the state the device knew was from before it lost its
connection. A live one is not held: the coordinator publishes its ending state before its run_end, on one
connection, so a live run_end while it trains is a forgery."""

from __future__ import annotations

from dataclasses import dataclass

from federation.protocol.messages import CoordinatorState, RunEnd

ENDING_PHASES = frozenset({"exporting", "done", "stopped"})   # coordinator phases in which a run_end is expected


@dataclass
class RunEndWatch:
    """The coordinator's last state, whether this run's model was seen, and a run_end held back meanwhile."""

    seen_run_model: bool = False
    coordinator: CoordinatorState | None = None
    held: RunEnd | None = None   # a retained run_end refused while the coordinator's last state said it ran

    def coordinator_running(self) -> bool:
        """True while the last state says the coordinator is online and not ending."""
        state = self.coordinator
        return state is not None and state.status == "online" and state.phase not in ENDING_PHASES

    def end(self, message: RunEnd, retained: bool) -> RunEnd | None:
        """A run_end came: the end to honour now, or None (an earlier run's, or held while the coordinator runs)."""
        self.held = message if retained and self.coordinator_running() else None
        return self._honoured(message, retained)

    def cleared(self) -> None:
        """The retained run_end was cleared (a new run, or the coordinator replaced a forgery): nothing is held."""
        self.held = None

    def state(self, message: CoordinatorState) -> RunEnd | None:
        """A coordinator state came: the held run_end if it counts now, else None."""
        self.coordinator = message
        if self.held is None or self.coordinator_running():
            return None
        end, self.held = self.held, None
        return self._honoured(end, retained=True)

    def _honoured(self, message: RunEnd, retained: bool) -> RunEnd | None:
        """PROTOCOL.md step 8: not while the coordinator runs (a forgery), and a retained one only after this run's
        model was seen (else an earlier run's end)."""
        if self.coordinator_running() or (retained and not self.seen_run_model):
            return None
        return message
