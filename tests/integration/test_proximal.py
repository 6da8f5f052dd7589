"""FedProx's proximal term (federation.learning.proximal) in real Keras training: one SGD step is exactly the
gradient of loss + mu/2 ||w - w_global||^2, for any optimizer class, and mu = 0 changes nothing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from federation.learning.proximal import with_proximal_term


def one_weight_model() -> "keras.Model":
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
    model.set_weights([np.ones((1, 1), np.float32)])
    return model


def fit_one_step(model: "keras.Model", optimizer: "keras.optimizers.Optimizer", x: float, y: float) -> float:
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.array([[x]], np.float32), np.array([[y]], np.float32), epochs=1, batch_size=1, verbose=0)
    return float(model.get_weights()[0][0, 0])


def test_a_sgd_step_is_the_gradient_of_loss_plus_the_proximal_term() -> None:
    model = one_weight_model()
    anchors = {model.weights[0].path: np.zeros((1, 1), np.float32)}
    # x = 1, y = 3: mse gradient at w = 1 is 2 (w x - y) x = -4; the proximal gradient is mu (w - 0) = 0.5.
    w = fit_one_step(model, with_proximal_term(keras.optimizers.SGD(0.1), anchors, 0.5), 1.0, 3.0)
    assert w == pytest.approx(1 - 0.1 * (-4 + 0.5), abs=1e-6)
    plain = fit_one_step(one_weight_model(), keras.optimizers.SGD(0.1), 1.0, 3.0)
    assert plain == pytest.approx(1 - 0.1 * -4, abs=1e-6)


def test_mu_zero_is_the_optimizer_itself_and_adam_keeps_its_settings() -> None:
    sgd = keras.optimizers.SGD(0.1)
    assert with_proximal_term(sgd, {}, 0.0) is sgd
    adam = with_proximal_term(keras.optimizers.Adam(0.003, beta_1=0.8), {"x": np.zeros(1)}, 0.1)
    assert isinstance(adam, keras.optimizers.Adam) and type(adam).__name__ == "ProximalAdam"
    assert adam.get_config()["beta_1"] == 0.8 and float(adam.learning_rate) == pytest.approx(0.003)


def test_the_term_pulls_training_back_towards_the_global_weights() -> None:
    """Many Adam steps on a target far away: the larger mu, the closer the weight stays to its anchor (1.0)."""
    finals = []
    for mu in (0.0, 0.1, 1.0):
        model = one_weight_model()
        anchors = {model.weights[0].path: np.ones((1, 1), np.float32)}
        model.compile(optimizer=with_proximal_term(keras.optimizers.Adam(0.05), anchors, mu), loss="mse")
        model.fit(np.ones((64, 1), np.float32), np.full((64, 1), 5.0, np.float32), epochs=20, batch_size=8,
                  verbose=0)
        finals.append(float(model.get_weights()[0][0, 0]))
    assert finals[0] > finals[1] > finals[2] > 1.0, finals
