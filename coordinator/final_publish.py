"""The coordinator's last publishes (deployed model, run_end, cleared global model, offline state), each confirmed.

Lost with the connection, they are sent again after a reconnect, within a bound; what stays unconfirmed is reported."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt

from federation.errors import FedmqError
from federation.transport.mqtt_link import MqttLink

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_ENV = "FEDMQ_FINAL_PUBLISH_TIMEOUT_S"
_POLL_S = 0.1


class FinalPublishError(FedmqError, RuntimeError):
    """Some of the coordinator's final publishes were not acknowledged by the broker in time."""

    def __init__(self, topics: Sequence[str], timeout_s: float, broker: str, run_dir: Path) -> None:
        self.topics = list(topics)
        super().__init__(
            f"{len(self.topics)} final publish(es) were not confirmed by the broker at {broker} within {timeout_s:g} s"
            f" ({TIMEOUT_ENV}): {', '.join(self.topics)}. Devices and dashboards may not have seen the end of the run "
            f"or the deployed model. The results are saved in {run_dir}; check the broker (is it up? its log, "
            f"message_size_limit, the ACL)")


def timeout_s() -> float:
    """How long the coordinator keeps trying: $FEDMQ_FINAL_PUBLISH_TIMEOUT_S, else 60 s."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", TIMEOUT_ENV, raw, DEFAULT_TIMEOUT_S)
        return DEFAULT_TIMEOUT_S
    return max(0.0, value)


def publish_confirmed(link: MqttLink, messages: Sequence[tuple[str, bytes]], timeout: float) -> list[str]:
    """Publish every (topic, payload) retained at QoS 1 and wait for each acknowledgement (PUBACK).

    Every publish not yet acknowledged when the connection drops (or made while it was going away) is made again
    once the link has reconnected; paho re-sends its in-flight copy too, and a retained duplicate is harmless.
    Returns the topics still unconfirmed after `timeout` seconds, in order."""
    deadline = time.monotonic() + timeout
    pending: dict[int, tuple[str, bytes]] = dict(enumerate(messages))
    infos: dict[int, mqtt.MQTTMessageInfo] = {}
    was_connected = link.connected.is_set()
    while pending:
        connected = link.connected.is_set()
        if connected and not was_connected:
            log.info("reconnected: publishing the %d unconfirmed final message(s) again", len(pending))
            infos.clear()
        was_connected = connected
        if connected:
            for index, (topic, payload) in pending.items():
                if index not in infos:
                    infos[index] = link.publish(topic, payload, qos=1, retain=True)
        for index in list(pending):
            info = infos.get(index)
            if info is not None and info.rc == 0 and _acknowledged(info):
                del pending[index]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    return [topic for topic, _ in pending.values()]


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False
