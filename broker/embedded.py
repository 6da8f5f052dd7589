"""Fallback MQTT broker (amqtt, pure Python) for machines without Mosquitto.

MQTT 3.1.1 only and slower than Mosquitto: for laptop demos, not deployments.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger(__name__)

FALLBACK_WARNING = (
    "Using the embedded amqtt broker as a FALLBACK: MQTT 3.1.1 only (no MQTT 5), "
    "slower than Mosquitto, meant for laptop demos. Real deployments use Mosquitto."
)

# Anonymous access is granted by this plugin: with no auth plugin loaded,
# amqtt 0.12 rejects every client. Leaving out the default plugin set also
# drops the $SYS publisher and the per-packet/per-event loggers.
_PLUGINS: dict[str, dict[str, Any]] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
}


def embedded_config(host: str, port: int) -> dict[str, Any]:
    """Return the minimal amqtt 0.12 broker config: one TCP listener, anonymous."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": dict(_PLUGINS),
    }


def run_embedded_broker(host: str, port: int) -> None:
    """Serve MQTT 3.1.1 on `host:port` with amqtt until SIGINT or SIGTERM."""
    log.warning(FALLBACK_WARNING)
    asyncio.run(_serve(host, port))


async def _serve(host: str, port: int) -> None:
    stop = _stop_event_on_signals()
    broker = Broker(embedded_config(host, port))
    await broker.start()
    log.info("embedded amqtt broker listening on %s:%s (MQTT 3.1.1)", host, port)
    try:
        await stop.wait()
    finally:
        log.info("stopping the embedded amqtt broker")
        await broker.shutdown()


def _stop_event_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
