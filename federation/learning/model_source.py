"""Where the coordinator's model comes from: a .keras file ([model] path), a builder function ([model] builder,
"package.module:function") or the registry ([model] name); with its compile recipe, task and wire architecture.

Every failure is a ModelSourceError naming the setting and the fix, never a traceback."""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.errors import FedmqError
from federation.learning.compile_recipe import (
    BINARY_LOSSES, CLASSIFICATION, REGRESSION, RecipeError, default_recipe, normalised,
    plan_optimizer, recipe_of, task_of,
)
from federation.learning.models import DEFAULT_MODEL, MODEL_REGISTRY, build_model
from federation.protocol.architecture import MAX_CONFIG_BYTES, CompileRecipe, ModelArchitecture

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class ModelSourceError(FedmqError, ValueError):
    """The [model] settings don't give a model fedmq can train: the message names the setting and the fix."""


@dataclass(frozen=True)
class ModelChoice:
    """Which model, from [model]: exactly one of a .keras file, a builder, or a registry name."""

    name: str = DEFAULT_MODEL
    path: str = ""
    builder: str = ""

    def check(self) -> None:
        given = [f"{key} = {value!r}" for key, value in (("path", self.path), ("builder", self.builder)) if value]
        if self.name != DEFAULT_MODEL and given:
            given.insert(0, f"name = {self.name!r}")
        if len(given) > 1:
            raise ModelSourceError(f"[model] {' and '.join(given)}: give one model source, a .keras file (path), a "
                                   "builder (package.module:function) or a registry name")


@dataclass(frozen=True)
class SourcedModel:
    """The coordinator's model, ready to publish: its label on the wire, recipe, task and outputs."""

    model: "keras.Model"
    label: str                 # ModelInfo.name: the registry name, the file's stem or the builder's function
    recipe: CompileRecipe
    task: str
    outputs: int               # the model's output units
    from_registry: bool

    def architecture(self) -> ModelArchitecture:
        """The model's Keras JSON (as model.to_json() writes it, UTF-8) with its sha256 and the recipe."""
        import keras  # here: start-up speed

        config = self.model.to_json().encode()
        if len(config) > MAX_CONFIG_BYTES:
            raise ModelSourceError(f"the model's Keras configuration is {len(config)} bytes, more than the "
                                   f"{MAX_CONFIG_BYTES} a device accepts")
        return ModelArchitecture(config=config, compile=self.recipe, keras_version=keras.__version__)

    @property
    def plan_optimizer(self) -> str:
        return plan_optimizer(self.recipe, "adam")


def dataset_outputs(dataset: Any) -> int:
    """What a model for `dataset` (federation.learning.datasets.Dataset) must output: one unit per class, or per
    regression target."""
    if getattr(dataset, "task", "classification") == REGRESSION:
        return int(dataset.y_train.shape[1]) if dataset.y_train.ndim > 1 else 1
    return int(dataset.num_classes)


def load_model_source(choice: ModelChoice, input_shape: tuple[int, ...], outputs: int, *, optimizer: str = "adam",
                      learning_rate: float = 1e-3, data_task: str | None = None) -> SourcedModel:
    """Build or load the model for data of `input_shape` with `outputs` classes (or regression targets).

    A compiled model keeps its recipe; an uncompiled one, and a registry model, gets the default recipe of the
    data's task (`data_task`; without it, a softmax output is a classifier) with [training]'s `optimizer` and
    `learning_rate`."""
    choice.check()
    if choice.path:
        model, label, registry = _from_file(choice.path), Path(choice.path).stem, False
    elif choice.builder:
        model, label, registry = _from_builder(choice.builder, input_shape, outputs), _builder_label(choice.builder), False
    else:
        if choice.name not in MODEL_REGISTRY:
            raise ModelSourceError(f"[model] name = {choice.name!r} is not a registered model (registered: "
                                   f"{', '.join(sorted(MODEL_REGISTRY))}); or give your own with [model] path "
                                   "(a .keras file) or builder (package.module:function)")
        model, label, registry = build_model(choice.name, input_shape, outputs), choice.name, True
    where = _where(choice)
    _check_model(model, where, input_shape)
    try:
        recipe = None if registry else recipe_of(model)
        if recipe is None:  # the task follows the output: a softmax classifier, else values
            recipe = default_recipe(data_task or _guess_task(model), optimizer, learning_rate)
        else:
            log.info("%s: its own compile recipe (loss %s, metrics %s, optimizer %s, learning rate %s); "
                     "[training] optimizer and learning_rate apply to uncompiled models only", where,
                     recipe.loss_name, [m if isinstance(m, str) else m.get("class_name") for m in recipe.metrics],
                     recipe.optimizer_name, recipe.learning_rate)
        task = task_of(recipe)
    except RecipeError as exc:
        raise ModelSourceError(f"{where}: {exc}") from None
    units = int(model.output_shape[-1])
    _check_outputs(where, task, units, outputs, recipe)
    _warn_unsafe_layers(model, where)
    return SourcedModel(model, label, recipe, task, units, registry)


def _where(choice: ModelChoice) -> str:
    if choice.path:
        return f"[model] path {choice.path}"
    return f"[model] builder {choice.builder}" if choice.builder else f"[model] name {choice.name}"


def _from_file(path: str) -> "keras.Model":
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelSourceError(f"[model] path {path}: no such file (give a .keras file saved with model.save)")
    if file.suffix != ".keras":
        raise ModelSourceError(f"[model] path {path}: expected a .keras file (model.save('my.keras')), not "
                               f"{file.suffix or 'a file without extension'}")
    import keras  # here: start-up speed

    try:
        with warnings.catch_warnings():  # a compiled, never trained model's optimizer has no state worth a warning
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return keras.saving.load_model(file, compile=True, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile errors... for a file it can't read
        raise ModelSourceError(f"[model] path {path}: Keras can't load it in safe mode: {type(exc).__name__}: "
                               f"{str(exc)[:400]}. Save it with model.save() from Keras 3, with built-in layers "
                               "(no Lambda) or custom ones registered with keras.saving.register_keras_serializable"
                               ) from None


def _builder_label(spec: str) -> str:
    return spec.rpartition(":")[2] or spec


def _from_builder(spec: str, input_shape: tuple[int, ...], outputs: int) -> "keras.Model":
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name:
        raise ModelSourceError(f"[model] builder {spec!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ModuleNotFoundError, or anything the module raises while importing
        raise ModelSourceError(f"[model] builder {spec}: can't import {module_name}: {type(exc).__name__}: "
                               f"{str(exc)[:300]} (is it on PYTHONPATH, or installed?)") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelSourceError(f"[model] builder {spec}: {module_name} has no function {function_name!r}")
    try:
        model = function(tuple(input_shape), outputs)
    except Exception as exc:  # the user's code: whatever it raises becomes a clear message
        raise ModelSourceError(f"[model] builder {spec}: calling it with (input_shape={tuple(input_shape)}, "
                               f"outputs={outputs}) raised {type(exc).__name__}: {str(exc)[:300]}") from None
    return model


def _check_model(model: Any, where: str, input_shape: tuple[int, ...]) -> None:
    import keras  # here: start-up speed

    if not isinstance(model, keras.Model):
        raise ModelSourceError(f"{where}: expected a keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelSourceError(f"{where}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                               "fedmq trains models with one input and one output")
    shape = tuple(model.input_shape[1:])
    if shape != tuple(input_shape):
        raise ModelSourceError(f"{where}: the model takes inputs of shape {shape}, but the data's examples have "
                               f"shape {tuple(input_shape)}; build it with keras.Input(shape={tuple(input_shape)})")
    if len(model.output_shape) != 2:
        raise ModelSourceError(f"{where}: the model's output has shape {model.output_shape}; fedmq expects "
                               "(batch, units): class probabilities or regression values")


def _guess_task(model: "keras.Model") -> str:
    """The task of an uncompiled model: classification when its last layer ends in a softmax, else regression."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    name = getattr(activation, "__name__", "") or ""
    if name == "softmax" or type(model.layers[-1]).__name__ == "Softmax":
        return CLASSIFICATION
    return REGRESSION


def _check_outputs(where: str, task: str, units: int, outputs: int, recipe: CompileRecipe) -> None:
    if task == CLASSIFICATION:
        binary = normalised(recipe.loss_name) in BINARY_LOSSES
        if units == outputs or (binary and units == 1 and outputs == 2):
            return
        raise ModelSourceError(f"{where}: the model has {units} output units, but the data has {outputs} classes; "
                               f"end it with Dense({outputs}, activation='softmax')")
    if units != outputs and outputs:
        raise ModelSourceError(f"{where}: the regression model has {units} output units, but the data has "
                               f"{outputs} targets")


def _warn_unsafe_layers(model: "keras.Model", where: str) -> None:
    """Devices build models in Keras's safe mode: say now when this one has a layer they will refuse."""
    lambdas = [layer.name for layer in _all_layers(model) if type(layer).__name__ == "Lambda"]
    if lambdas:
        log.warning("%s: the model has Lambda layers (%s): devices build the model in Keras's safe mode, which runs "
                    "no Python code from the wire, and will refuse it. Use built-in layers, or a custom layer "
                    "registered on every device", where, ", ".join(lambdas))


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_all_layers(layer))
    return found



def model_task(choice: ModelChoice, input_shape: tuple[int, ...]) -> str | None:
    """The task a user's model fixes by itself ([model] path or builder: its compile recipe's loss, or for an
    uncompiled one its output layer), known before the data's labels are read, so that a table's labels can be read
    as classes or as regression targets; None for a registry model (the data decides). Problems with the model are
    left for load_model_source to report."""
    if not (choice.path or choice.builder):
        return None
    model = _from_file(choice.path) if choice.path else _from_builder(choice.builder, input_shape, 1)
    try:
        recipe = recipe_of(model)
        return task_of(recipe) if recipe is not None else _guess_task(model)
    except (RecipeError, AttributeError, IndexError):
        return None
