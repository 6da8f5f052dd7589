"""The MQTT topic tree of one federated run, and the rules for names used as topic levels.

All topics sit under `<prefix>/<run>/`, so `mosquitto_sub -v -t '<prefix>/#'` shows every run."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_level(value: str, what: str) -> str:
    """Return `value` if it can be one topic level (client id, run id); ValueError naming it otherwise."""
    if not isinstance(value, str) or not _LEVEL.fullmatch(value):  # match() would let a trailing "\n" through
        raise ValueError(
            f"{what} {value!r} is not usable in MQTT topics: use 1-64 letters, digits, '_', '-' or '.',"
            " starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class RunTopics:
    """Topic names for one run. QoS and retain flags are listed in PROTOCOL.md."""

    prefix: str
    run: str

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            check_level(part, "topic prefix level")
        check_level(self.run, "run id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.run}"

    @property
    def global_model(self) -> str:
        return f"{self.base}/model/global"

    @property
    def deploy(self) -> str:
        """The deployed TFLite model for inference-only devices (retained)."""
        return f"{self.base}/model/deploy"

    @property
    def deploy_chunks_wildcard(self) -> str:
        return f"{self.base}/model/deploy/chunk/+"

    def deploy_chunk(self, index: int) -> str:
        return f"{self.base}/model/deploy/chunk/{index}"

    @property
    def coordinator_state(self) -> str:
        return f"{self.base}/coordinator/state"

    @property
    def run_end(self) -> str:
        return f"{self.base}/end"

    @property
    def metrics(self) -> str:
        """Each closed round's metrics (retained: the last round's), for dashboards and monitors."""
        return f"{self.base}/metrics"

    @property
    def updates_wildcard(self) -> str:
        return f"{self.base}/update/+"

    @property
    def statuses_wildcard(self) -> str:
        return f"{self.base}/client/+/status"

    def update(self, client_id: str) -> str:
        return f"{self.base}/update/{client_id}"

    def client_status(self, client_id: str) -> str:
        return f"{self.base}/client/{client_id}/status"

    @property
    def relay_statuses_wildcard(self) -> str:
        return f"{self.base}/relay/+/status"

    @property
    def relay_updates_wildcard(self) -> str:
        return f"{self.base}/relay/+/update"

    def relay_status(self, site: str) -> str:
        """A site relay's presence summary (retained; its last will)."""
        return f"{self.base}/relay/{site}/status"

    def relay_update(self, site: str) -> str:
        """A site relay's partial aggregates (and their chunks, below it)."""
        return f"{self.base}/relay/{site}/update"

    def site_of(self, topic: str) -> str | None:
        """The site in a relay status or relay update topic of this run (or one of its chunks), else None."""
        rest = topic[len(self.base) + 1:] if topic.startswith(self.base + "/") else ""
        parts = rest.split("/")
        if len(parts) >= 3 and parts[0] == "relay" and parts[2] in ("status", "update"):
            return parts[1]
        return None

    def client_of(self, topic: str) -> str | None:
        """The client id in an update or status topic of this run, else None."""
        rest = topic[len(self.base) + 1:] if topic.startswith(self.base + "/") else ""
        parts = rest.split("/")
        if len(parts) == 2 and parts[0] == "update":
            return parts[1]
        if len(parts) == 3 and parts[0] == "client" and parts[2] == "status":
            return parts[1]
        return None
