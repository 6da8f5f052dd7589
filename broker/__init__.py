"""MQTT broker for fedmq: run Mosquitto (or an embedded amqtt fallback).

`python -m broker` starts one; `MosquittoProcess` runs one on a free port for tests.
"""

from broker.mosquitto_process import (
    DEFAULT_CONFIG,
    BrokerError,
    MosquittoProcess,
    find_mosquitto,
    render_config,
)
from broker.ports import free_port

__all__ = [
    "DEFAULT_CONFIG",
    "BrokerError",
    "MosquittoProcess",
    "find_mosquitto",
    "free_port",
    "render_config",
]
