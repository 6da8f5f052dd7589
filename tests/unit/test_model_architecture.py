"""The model's architecture and compile recipe on the wire, the task a recipe implies, the [model] sources in
the settings, and the device's checks of a fit result: pure logic, no TensorFlow."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_client.errors import IncompatibleModelError
from edge_client.model_builder import lambda_layers
from edge_client.trainer import FitResult, FunctionTrainer, RoundContext, checked_result
from federation.config.settings import ConfigError, load_settings
from federation.learning.compile_recipe import (
    RecipeError, default_recipe, fitting_labels, plan_optimizer, task_of,
)
from federation.protocol.architecture import MAX_CONFIG_BYTES, CompileRecipe, ModelArchitecture, config_digest
from federation.protocol.codec import DecodeError
from federation.protocol.messages import GlobalModel, ModelInfo, TrainingPlan, decode_message

CONFIG = json.dumps({"class_name": "Sequential", "config": {"name": "tiny", "layers": [
    {"class_name": "InputLayer", "config": {"batch_shape": [None, 4]}},
    {"class_name": "Dense", "config": {"name": "out", "units": 3, "activation": "softmax"}}]}}).encode()
ADAM = {"module": "keras.optimizers", "class_name": "Adam", "config": {"learning_rate": 0.002},
        "registered_name": None}
RECIPE = CompileRecipe("sparse_categorical_crossentropy", ("accuracy",), ADAM)


def _info(architecture: ModelArchitecture | None) -> ModelInfo:
    return ModelInfo("tiny", (4,), 3, ("a", "b", "c"), architecture=architecture)


def _global_model(info: ModelInfo) -> GlobalModel:
    return GlobalModel(run="r", round=1, sender="coordinator", model=info, train=TrainingPlan(1, 8, 0.002),
                       tensors=[("out/kernel", np.zeros((4, 3), np.float32))], total_rounds=2)


def test_the_architecture_round_trips_inside_the_global_model() -> None:
    arch = ModelArchitecture(config=CONFIG, compile=RECIPE, keras_version="3.15.1")
    assert arch.sha256 == config_digest(CONFIG) and len(arch.sha256) == 64
    decoded = decode_message(_global_model(_info(arch)).encode())
    assert isinstance(decoded, GlobalModel) and decoded.model.architecture == arch
    assert decoded.model.architecture.compile.learning_rate == pytest.approx(0.002)
    assert decoded.model == _info(arch)


def test_a_model_without_an_architecture_still_decodes() -> None:
    decoded = decode_message(_global_model(_info(None)).encode())
    assert isinstance(decoded, GlobalModel) and decoded.model.architecture is None


def _tampered(**changes: Any) -> bytes:
    """A global model whose model.architecture map has `changes` applied (None deletes a key)."""
    from federation.protocol.codec import pack, unpack

    raw = unpack(_global_model(_info(ModelArchitecture(CONFIG, RECIPE, "3.15.1"))).encode())
    arch = raw["model"]["architecture"]
    for key, value in changes.items():
        if value is None:
            arch.pop(key)
        else:
            arch[key] = value
    return pack(raw)


@pytest.mark.parametrize("changes, reason", [
    ({"config": CONFIG.decode()}, "config must be bin"),
    ({"config": b""}, "out of range"),
    ({"sha256": "abc"}, "64 lowercase hex"),
    ({"sha256": config_digest(b"other")}, "does not match the config bytes"),
    ({"sha256": None}, "sha256 must be"),
    ({"format": "onnx"}, "unknown format 'onnx'"),
    ({"keras_version": 3}, "keras_version must be a short str"),
    ({"compile": "adam"}, "compile: expected a map"),
    ({"compile": {"loss": 7, "metrics": [], "optimizer": ADAM}}, "loss: expected a Keras name"),
    ({"compile": {"loss": "mse", "metrics": "mae", "optimizer": ADAM}}, "metrics must be a list"),
    ({"compile": {"loss": "mse", "metrics": ["mae"] * 33, "optimizer": ADAM}}, "at most 32"),
    ({"compile": {"loss": "mse", "metrics": [], "optimizer": "adam"}}, "optimizer must be a map"),
    ({"compile": {"loss": {"config": {}}, "metrics": [], "optimizer": ADAM}}, "needs a class_name"),
    ({"compile": {"loss": "mse", "metrics": [], "optimizer": {"class_name": "Adam", "config": [1]}}},
     "config of 'Adam' must be a map"),
])
def test_a_bad_architecture_map_is_a_decode_error_that_says_why(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_message(_tampered(**changes))


def test_an_oversized_config_is_refused_before_it_is_hashed() -> None:
    big = b" " * (MAX_CONFIG_BYTES + 1)
    with pytest.raises(DecodeError, match=f"out of range \\(1..{MAX_CONFIG_BYTES}\\)") as caught:
        decode_message(_tampered(config=big, sha256=config_digest(big)))
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize("loss, task", [
    ("sparse_categorical_crossentropy", "classification"), ("binary_crossentropy", "classification"),
    ({"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": True}}, "classification"),
    ("mse", "regression"), ("mean_absolute_error", "regression"), ("huber", "regression"),
    ({"class_name": "Huber", "config": {"delta": 2.0}}, "regression"), ("log_cosh", "regression"),
    ({"class_name": "MeanSquaredError", "config": {}}, "regression"),
])
def test_the_task_follows_the_loss(loss: Any, task: str) -> None:
    assert task_of(CompileRecipe(loss, (), ADAM)) == task


def test_an_unknown_loss_is_refused_with_the_fix() -> None:
    with pytest.raises(RecipeError, match="can't tell the task of the loss 'my_loss'.*Compile the model"):
        task_of(CompileRecipe("my_loss", (), ADAM))


class _Compiled:
    """What fitting_labels reads of a compiled Keras model: its loss and output shape."""

    def __init__(self, loss: Any, classes: int = 4) -> None:
        self.loss, self.output_shape = loss, (None, classes)


class CategoricalCrossentropy:   # the shape of a Keras loss object: a name attribute
    name = "categorical_crossentropy"


def categorical_hinge() -> None:   # the shape of a Keras loss function: its __name__
    """A stand-in."""


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "CategoricalFocalCrossentropy",
                                  CategoricalCrossentropy(), categorical_hinge])
def test_a_loss_that_takes_one_hot_labels_gets_them(loss: Any) -> None:
    y = np.array([2, 0, 3, 3], np.int64)
    assert task_of(CompileRecipe("categorical_crossentropy", (), ADAM)) == "classification"
    one_hot = fitting_labels(_Compiled(loss), y)
    assert one_hot.dtype == np.float32 and one_hot.shape == (4, 4)
    assert np.array_equal(one_hot.argmax(axis=1), y) and np.array_equal(one_hot.sum(axis=1), np.ones(4))


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "binary_crossentropy", "mse", None])
def test_other_losses_keep_the_labels_as_they_are(loss: Any) -> None:
    y = np.array([1, 0, 1])
    assert fitting_labels(_Compiled(loss), y) is y


def test_the_default_recipes_and_the_plans_optimizer() -> None:
    classify = default_recipe("classification", "sgd", 0.05)
    assert (classify.loss, classify.metrics, classify.optimizer_name, classify.learning_rate) == \
        ("sparse_categorical_crossentropy", ("accuracy",), "SGD", 0.05)
    regress = default_recipe("regression")
    assert (regress.loss, regress.metrics, regress.optimizer_name, regress.learning_rate) == \
        ("mse", ("mae",), "Adam", 0.001)
    assert plan_optimizer(classify, "adam") == "sgd"
    assert plan_optimizer(CompileRecipe("mse", (), {"class_name": "RMSprop", "config": {}}), "adam") == "adam"
    with pytest.raises(RecipeError, match="unknown optimizer 'lbfgs'"):
        default_recipe("classification", "lbfgs")


def test_lambda_layers_are_found_in_nested_models() -> None:
    inner = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Lambda", "config": {"name": "inner_lambda", "function": "..."}}]}}
    config = {"class_name": "Sequential", "config": {"layers": [inner, {"class_name": "Dense", "config": {}}]}}
    assert lambda_layers(config) == ["inner_lambda"]
    assert lambda_layers(json.loads(CONFIG)) == []


@pytest.mark.parametrize("overrides, message", [
    ({"model.path": "m.keras", "model.builder": "pkg.mod:build"}, "give one model source"),
    ({"model.path": "m.keras", "model.name": "other_cnn"}, "name = 'other_cnn' and path = 'm.keras'"),
    ({"model.builder": "pkg.mod"}, "write it as package.module:function"),
    ({"model.builder": "pkg.mod:build()"}, "write it as package.module:function"),
])
def test_the_model_sources_are_checked_when_the_settings_load(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, overrides)


def test_one_model_source_loads() -> None:
    assert load_settings(None, {"model.path": "m.keras"}).model.path == "m.keras"
    assert load_settings(None, {"model.builder": "my_models.cifar:build"}).model.builder == "my_models.cifar:build"


GLOBAL = [("k", np.zeros((2, 3), np.float32)), ("count", np.array(5, np.int64))]


def test_a_fit_result_is_checked_and_cast_to_the_global_dtypes() -> None:
    result = checked_result(FitResult([np.ones((2, 3), np.float64), np.array(5, np.int64)], 10,
                                      {"loss": np.float32(0.5), "bad": float("nan"), "text": "x"}), GLOBAL, "fit")
    assert result.weights[0].dtype == np.float32 and result.metrics == {"loss": 0.5}
    with pytest.raises(IncompatibleModelError, match="returned 1 weight arrays; the model has 2"):
        checked_result(FitResult([np.zeros((2, 3))], 1), GLOBAL, "fit")
    with pytest.raises(IncompatibleModelError, match=r"weight 'k' of shape \(3, 2\)"):
        checked_result(FitResult([np.zeros((3, 2)), np.array(5)], 1), GLOBAL, "fit")
    with pytest.raises(IncompatibleModelError, match="num_examples 0"):
        checked_result(FitResult([np.zeros((2, 3)), np.array(5)], 0), GLOBAL, "fit")
    with pytest.raises(IncompatibleModelError, match="weight 'count' as float64"):
        checked_result(FitResult([np.zeros((2, 3)), np.array(5.5)], 3), GLOBAL, "fit")


def test_a_fit_function_may_return_a_tuple() -> None:
    trainer = FunctionTrainer(lambda weights, plan, model: ([w + 1 for w in weights], 7, {"loss": 1.0}), 7)
    result = trainer.fit([np.zeros(2)], TrainingPlan(1, 8, 0.01), _info(None), RoundContext(1, 2))
    assert result.num_examples == 7 and result.metrics == {"loss": 1.0} and result.weights[0][0] == 1
    bad = FunctionTrainer(lambda weights, plan, model: "done")
    with pytest.raises(TypeError, match="returned str; return a FitResult"):
        bad.fit([], TrainingPlan(1, 8, 0.01), _info(None), RoundContext(1, 2))


def test_the_coordinators_update_line_shows_whatever_metrics_the_recipe_has() -> None:
    from coordinator.engine import local_metrics_text

    assert local_metrics_text({"loss": 0.5, "mae": 1.25, "train_time_s": 3.0}) == ", local loss 0.5000, mae 1.2500"
    assert local_metrics_text({"loss": 0.5, "accuracy": 0.75}) == ", local loss 0.5000, accuracy 0.7500"
    assert local_metrics_text({"a\nb": 1.0}) == ", local 'a\\nb' 1.0000", "a name from the wire can't break the line"
    assert local_metrics_text({"train_time_s": 1.0}) == ""
