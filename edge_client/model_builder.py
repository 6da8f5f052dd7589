"""Builds the coordinator's model on a device from the wire (global_model.model.architecture): Keras JSON in safe
mode, no Lambda layers, custom objects only if this device registered them, within a memory budget.

Built models are cached by the architecture's sha256 for the run; a refusal is an IncompatibleModelError whose
text the client publishes in its status."""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from edge_client.errors import IncompatibleModelError
from federation.errors import FedmqError
from federation.protocol.architecture import ModelArchitecture

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

CACHED_MODELS = 2            # built models kept per run (the current one, and the one before a change)
TRAINING_COPIES = 4          # training holds weights, gradients and two Adam moments: about 4 copies
_MAX_CONFIG_DEPTH = 64       # nesting of the Keras JSON a device walks (a real model: about 10)


class CustomObjectsError(FedmqError, ValueError):
    """--custom-objects names a module that can't be imported."""


def machine_memory_mb() -> float:
    """This machine's physical memory in MiB (0 when the platform doesn't say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return 0.0


def default_max_model_mb() -> float:
    """The largest model's weights a device accepts by default: a quarter of its memory over the 4 copies
    training holds (weights, gradients, two optimizer moments), so 1/16 of the memory; 256 MiB if unknown."""
    memory = machine_memory_mb()
    return round(memory / 4 / TRAINING_COPIES, 1) if memory else 256.0


def import_custom_objects(modules: list[str]) -> None:
    """Import the modules that register this device's custom layers (keras.saving.register_keras_serializable)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ModuleNotFoundError, or whatever the module raises while importing
            raise CustomObjectsError(f"--custom-objects {name}: can't import it: {type(exc).__name__}: "
                                     f"{str(exc)[:300]} (is it installed, or on PYTHONPATH?)") from None
        log.info("custom objects: imported %s", name)


def lambda_layers(config: Any) -> list[str]:
    """Names of the Lambda layers anywhere in a Keras JSON config (nested models included)."""
    found: list[str] = []
    stack: list[tuple[Any, int]] = [(config, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_CONFIG_DEPTH:
            continue
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                inner = node.get("config")
                found.append(str(inner.get("name", "?")) if isinstance(inner, dict) else "?")
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    return found


class ModelBuilder:
    """Builds models from architectures, refusing what this device can't or won't run."""

    def __init__(self, max_model_mb: float = 0.0) -> None:
        self.max_model_mb = max_model_mb or default_max_model_mb()
        self._cache: OrderedDict[str, keras.Model] = OrderedDict()

    def check_size(self, weight_bytes: int, name: str) -> None:
        """Refuse a model whose weights, held about 4 times while training, exceed --max-model-mb."""
        mb = weight_bytes / 2**20
        if mb > self.max_model_mb:
            raise IncompatibleModelError(
                f"the model {name} has {mb:.1f} MiB of weights, more than this device's --max-model-mb "
                f"{self.max_model_mb:g} (training holds about {TRAINING_COPIES} copies: {TRAINING_COPIES * mb:.0f} "
                "MiB); give the device more memory, raise --max-model-mb, or use a smaller model")

    def build(self, architecture: ModelArchitecture, name: str) -> "keras.Model":
        """The model of `architecture`, built once per run and then reused (cached by its sha256)."""
        cached = self._cache.get(architecture.sha256)
        if cached is not None:
            self._cache.move_to_end(architecture.sha256)
            return cached
        model = self._build(architecture, name)
        self._cache[architecture.sha256] = model
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
        return model

    def _build(self, architecture: ModelArchitecture, name: str) -> "keras.Model":
        try:
            config = json.loads(architecture.config.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IncompatibleModelError(f"the model {name}'s architecture is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise IncompatibleModelError(f"the model {name}'s architecture is a JSON {type(config).__name__}, "
                                         "expected an object")
        lambdas = lambda_layers(config)
        if lambdas:
            raise IncompatibleModelError(
                f"the model {name} has a Lambda layer ({', '.join(lambdas[:5])}): devices build models in Keras's "
                "safe mode, which runs no Python code received over the network. Replace it with built-in layers, "
                "or with a custom layer registered on every device (--custom-objects MODULE)")
        import keras  # here: start-up speed (the CLI's --help and the unit tier need no TensorFlow)

        try:
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        except Exception as exc:  # Keras raises TypeError (unknown class), ValueError (unsafe)...
            text = " ".join(str(exc).split())[:400]
            hint = ""
            if "locate" in text or "Unknown" in text or "not found" in text:
                hint = (" A custom layer or object must be installed on this device and registered with "
                        "keras.saving.register_keras_serializable: start it with --custom-objects MODULE.")
            version = (f" (the coordinator has Keras {architecture.keras_version}, this device {keras.__version__})"
                       if architecture.keras_version and architecture.keras_version != keras.__version__ else "")
            raise IncompatibleModelError(f"can't build the model {name} from its architecture{version}: "
                                         f"{type(exc).__name__}: {text}.{hint}") from None
        if not isinstance(model, keras.Model):
            raise IncompatibleModelError(f"the model {name}'s architecture builds a {type(model).__name__}, not a "
                                         "keras.Model")
        log.info("built the model %s from its architecture (%d weights, sha256 %s)", name, len(model.weights),
                 architecture.sha256[:12])
        return model
