"""What a device does with a round's global weights: a Trainer's fit(weights, plan, model, context) returns the
new weights, the number of examples and metrics (in the spirit of Flower's NumPyClient).

KerasTrainer, the default, builds the model from the wire and trains it on LocalData; FunctionTrainer wraps a
user's own function. The MQTT side (presence, re-sends, chunking) stays EdgeClient's."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edge_client.errors import IncompatibleModelError
from edge_client.model_builder import ModelBuilder
from federation.protocol.codec import DecodeError, check_tensors
from federation.protocol.messages import MAX_METRIC_VALUE, MAX_METRICS, ModelInfo, TrainingPlan

if TYPE_CHECKING:
    import keras

    from edge_client.local_data import LocalData, LocalSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What a round's training returns: the new weights (same order, shapes and dtypes as the global ones),
    the number of examples trained on (FedAvg's weight) and metrics (names to numbers; e.g. loss, accuracy)."""

    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundContext:
    """The round a fit is for, and the hooks of the client around it. `between_batches()` lets the client handle
    MQTT messages on the training thread (call it now and then in a long fit; KerasTrainer does after every
    batch); `stop_requested()` is True once the result is no longer wanted (the run ended meanwhile): a long fit
    may then return at once, whatever it holds; `callbacks` are Keras callbacks (the progress panel)."""

    round: int
    total_rounds: int
    seed: int = 0
    between_batches: Callable[[], object] = lambda: None
    callbacks: list[Any] = field(default_factory=list)
    stop_requested: Callable[[], bool] = lambda: False


class Trainer(ABC):
    """One device's training code. Subclass it, or pass a plain function to FunctionTrainer."""

    description: str = "own training code"   # what the data is, for the log

    @property
    def num_examples(self) -> int:
        """Examples held, announced in the device's status (0: not said)."""
        return 0

    def check(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo) -> None:
        """Before training: raise IncompatibleModelError if this device can't train `model` (the client then
        publishes why in its status). The default accepts every model."""

    @abstractmethod
    def fit(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo,
            context: RoundContext) -> FitResult:
        """Train from the global `weights` as `plan` says; raise IncompatibleModelError when this device can't
        (its text goes in the device's status and the coordinator's log)."""


FitFunction = Callable[[list[np.ndarray], TrainingPlan, ModelInfo], "FitResult | tuple[Any, ...]"]


class FunctionTrainer(Trainer):
    """A user's function fit(weights, plan, model_info) -> FitResult, or a (weights, num_examples[, metrics])
    tuple, as a Trainer."""

    def __init__(self, function: FitFunction, num_examples: int = 0, description: str = "") -> None:
        if not callable(function):
            raise TypeError(f"fit must be a function (weights, plan, model_info) -> FitResult, got "
                            f"{type(function).__name__}")
        self.function = function
        self._num_examples = num_examples
        self.description = description or getattr(function, "__name__", "own fit function")

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def fit(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo,
            context: RoundContext) -> FitResult:
        result = self.function(weights, plan, model)
        if isinstance(result, tuple) and len(result) in (2, 3):
            result = FitResult(list(result[0]), int(result[1]), dict(result[2]) if len(result) == 3 else {})
        if not isinstance(result, FitResult):
            raise TypeError(f"{self.description} returned {type(result).__name__}; return a FitResult(weights, "
                            "num_examples, metrics) or a (weights, num_examples, metrics) tuple")
        return result


def checked_result(result: FitResult, global_weights: list[tuple[str, np.ndarray]], who: str) -> FitResult:
    """The result with float weights cast to the global dtypes and metrics cleaned for the wire; IncompatibleModelError
    naming the first tensor that doesn't fit (wrong count, shape or kind of dtype)."""
    weights = list(result.weights)
    if len(weights) != len(global_weights):
        raise IncompatibleModelError(f"{who} returned {len(weights)} weight arrays; the model has {len(global_weights)}")
    cast = []
    for (name, g), w in zip(global_weights, weights):
        w = np.asarray(w)
        if w.shape != g.shape:
            raise IncompatibleModelError(f"{who} returned weight {name!r} of shape {w.shape}; the model's is {g.shape}")
        if w.dtype != g.dtype:
            if w.dtype.kind != g.dtype.kind and not (w.dtype.kind in "fiu" and g.dtype.kind == "f"):
                raise IncompatibleModelError(f"{who} returned weight {name!r} as {w.dtype}; the model's is {g.dtype}")
            w = w.astype(g.dtype)
        cast.append(w)
    if not isinstance(result.num_examples, (int, np.integer)) or not 0 < int(result.num_examples) <= 10**9:
        raise IncompatibleModelError(f"{who} returned num_examples {result.num_examples!r}: a positive int is needed")
    metrics = {}
    for key, value in list(result.metrics.items())[:MAX_METRICS - 1]:   # one left for train_time_s
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number) and abs(number) <= MAX_METRIC_VALUE:
                metrics[str(key)[:64]] = number
    return FitResult(cast, int(result.num_examples), metrics)


class KerasTrainer(Trainer):
    """The default: builds the coordinator's model from its architecture (or the registry, for a coordinator that
    sends none), compiles it with the recipe and trains it with model.fit on this device's data (a LocalSource:
    examples as they are, or a CSV's made by the model's column schema)."""

    def __init__(self, source: "LocalSource", builder: ModelBuilder | None = None) -> None:
        from edge_client.local_data import LocalData

        self.source = source
        self.data: LocalData | None = source if isinstance(source, LocalData) else None
        self.builder = builder or ModelBuilder()
        self.description = source.name
        self._labels: tuple[tuple[tuple[str, ...], int], np.ndarray] | None = None
        self._registered: tuple[ModelInfo, keras.Model] | None = None

    @property
    def num_examples(self) -> int:
        return int(self.source.num_examples)

    def data_for(self, info: ModelInfo) -> "LocalData":
        """This device's examples for `info`'s model (a CSV's are made by its schema); IncompatibleModelError
        when the data does not fit it."""
        from federation.learning.datasets import DatasetError

        try:
            data = self.source.for_model(info)
        except (DatasetError, ValueError) as exc:  # a column, class or window the file lacks; a bad partition
            raise IncompatibleModelError(str(exc)) from None
        if data is not self.data:
            self.data, self._labels = data, None
        return data

    def model_for(self, info: ModelInfo) -> "keras.Model":
        """The coordinator's model, built here; IncompatibleModelError when it doesn't fit this device."""
        data = self.data_for(info)
        if tuple(info.input_shape) != data.input_shape:
            raise IncompatibleModelError(
                f"the coordinator's model {info.name} takes inputs of shape {tuple(info.input_shape)}, but this "
                f"device's data ({data.name}) has shape {data.input_shape}")
        self.labels_for(info)
        if info.architecture is not None:
            return self.builder.build(info.architecture, info.name)
        from federation.learning.models import ModelError, build_model

        try:  # a coordinator that sends no architecture: the registry's model of that name, built once
            if self._registered is None or self._registered[0] != info:
                self._registered = (info, build_model(info.name, info.input_shape, info.num_classes))
            return self._registered[1]
        except ModelError as exc:
            raise IncompatibleModelError(f"the coordinator sent no architecture and {exc}") from None

    def labels_for(self, info: ModelInfo) -> np.ndarray:
        """This device's labels as indices of the coordinator's classes, or regression targets as float32
        (IncompatibleModelError if they don't fit the model)."""
        from edge_client.labels import label_map
        from edge_client.local_data import task_labels
        from federation.learning.datasets import DatasetError

        data = self.data_for(info)
        key = (info.class_names, info.num_classes)
        if self._labels is not None and self._labels[0] == key:
            return self._labels[1]
        try:
            y, names = task_labels(data, info)
        except DatasetError as exc:
            raise IncompatibleModelError(str(exc)) from None
        mapping = None if info.task == "regression" else label_map(names, info, int(y.max()) + 1 if y.size else 0)
        labels = y if mapping is None else mapping[y]
        self._labels = (key, labels)
        return labels

    def check(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo) -> None:
        """Build the model (once per architecture) and check that the weights and this device's data fit it."""
        from federation.learning.models import weight_specs

        self.builder.check_size(sum(w.nbytes for w in weights), model.name)
        specs = weight_specs(self.model_for(model))
        try:  # by position: the tensors' names are the coordinator's
            check_tensors([(spec.name, w) for spec, w in zip(specs, weights)] + [("", w) for w in weights[len(specs):]],
                          specs)
        except DecodeError as exc:
            raise IncompatibleModelError(f"the global weights do not fit the model {model.name} built here: {exc}"
                                         ) from None

    def fit(self, weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo,
            context: RoundContext) -> FitResult:
        import keras  # here: start-up speed

        from federation.learning.compile_recipe import RecipeError, compile_with, fitting_labels
        from federation.learning.models import compile_model, set_model_weights

        self.check(weights, plan, model)
        net = self.model_for(model)
        labels = self.labels_for(model)
        set_model_weights(net, weights)
        try:
            if model.architecture is not None:
                compile_with(net, model.architecture.compile)
            else:
                compile_model(net, plan.optimizer, plan.learning_rate)
        except RecipeError as exc:
            raise IncompatibleModelError(f"can't compile the model {model.name} here: {exc}") from None
        if plan.proximal_mu:   # FedProx: the loss gains mu/2 ||w - w_global||^2 (federation.learning.proximal)
            from federation.learning.proximal import with_proximal_term

            anchors = {w.path: t for w, t in zip(net.weights, weights)}
            net.optimizer = with_proximal_term(net.optimizer, anchors, plan.proximal_mu)
        keras.utils.set_random_seed(context.seed * 100003 + context.round)
        def between_batches(batch: int, logs: object = None) -> None:
            context.between_batches()
            if context.stop_requested():   # the run ended while this device trained: stop after this batch
                net.stop_training = True

        between = keras.callbacks.LambdaCallback(on_train_batch_end=between_batches)
        history = net.fit(self.data_for(model).x, fitting_labels(net, labels), epochs=plan.epochs,
                          batch_size=plan.batch_size, shuffle=True, verbose=0, callbacks=[*context.callbacks, between])
        metrics = {name: float(values[-1]) for name, values in history.history.items() if values}
        return FitResult([w.numpy() for w in net.weights], len(labels), metrics)

