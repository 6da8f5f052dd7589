"""The edge client's Python API: `start_client(broker, client_id, fit=...)` joins a run with your own training
function and data pipeline; fedmq does the MQTT side (presence, re-sends, chunking, the id check).

    from edge_client.api import FitResult, start_client

    def fit(weights, plan, model_info):   # numpy arrays in, numpy arrays out
        ...
        return FitResult(new_weights, num_examples=len(x), metrics={"loss": loss})

    start_client("localhost:1883", "pi-kitchen", fit=fit, num_examples=len(x), run="demo")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_client.errors import IncompatibleModelError
from edge_client.trainer import FitFunction, FitResult, FunctionTrainer, RoundContext, Trainer
from federation.protocol.messages import ModelInfo, TrainingPlan

if TYPE_CHECKING:
    from edge_client.local_data import LocalData
    from federation.transport.mqtt_link import BrokerAddress

__all__ = ["FitResult", "IncompatibleModelError", "ModelInfo", "RoundContext", "Trainer", "TrainingPlan",
           "start_client"]
log = logging.getLogger(__name__)


def start_client(broker: "str | BrokerAddress", client_id: str, *, fit: "FitFunction | Trainer | None" = None,
                 data: "LocalData | None" = None, num_examples: int = 0, run: str = "demo",
                 topic_prefix: str = "fedmq", max_rounds: int = 0, seed: int = 0, chunk_bytes: int = 0,
                 max_payload_mb: float = 64.0, max_model_mb: float = 0.0, check_client_id: bool = True) -> int:
    """Train in run `run` until it ends (or `max_rounds` were trained); return the number of rounds trained here.

    `fit`: a function fit(weights, plan, model_info) -> FitResult (or a (weights, num_examples, metrics) tuple),
    or a Trainer; each round it gets the global weights (numpy arrays, in the model's order), the TrainingPlan
    (epochs, batch_size, learning_rate...) and the ModelInfo (input_shape, classes, task, and `architecture`:
    the Keras JSON and compile recipe). Without `fit`, fedmq's KerasTrainer trains the coordinator's model on
    `data` (edge_client.local_data.LocalData). `num_examples` is announced in the device's status.

    Raises IncompatibleModelError when the run ended and this device could train none of its models,
    BrokerRefusedError when the broker refused the login, ClientIdInUseError when `client_id` is online
    elsewhere (with `check_client_id`)."""
    from edge_client.client import ClientSettings, EdgeClient
    from edge_client.model_builder import ModelBuilder
    from federation.transport.mqtt_link import BrokerAddress

    address = BrokerAddress.parse(broker) if isinstance(broker, str) else broker
    trainer = fit if isinstance(fit, Trainer) or fit is None else FunctionTrainer(fit, num_examples)
    settings = ClientSettings(client_id=client_id, broker=address, run=run, topic_prefix=topic_prefix,
                              max_payload_mb=max_payload_mb, chunk_bytes=chunk_bytes, seed=seed)
    client = EdgeClient(settings, data, trainer=trainer, model_builder=ModelBuilder(max_model_mb))
    if check_client_id:
        from edge_client.id_claim import ensure_client_id_free

        ensure_client_id_free(address, client.topics.client_status(client_id), client_id,
                              client.receiver.max_payload)
    return client.run(max_rounds=max_rounds)
