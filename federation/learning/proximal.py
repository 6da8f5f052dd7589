"""FedProx (Li et al., 2020): the proximal term mu/2 ||w - w_global||^2 added to a device's local loss, as the
gradient term mu (w - w_global) that any Keras optimizer then applies, so every model and optimizer gets it.

Adding the term's gradient before the optimizer's update is exactly training on loss + mu/2 ||w - w_global||^2."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import numpy as np


def with_proximal_term(optimizer: "keras.optimizers.Optimizer", anchors: dict[str, "np.ndarray"],
                       mu: float) -> "keras.optimizers.Optimizer":
    """A copy of `optimizer` (same class and settings, fresh state) whose every step adds mu (w - anchor) to the
    gradient of each trainable variable, the anchor being `anchors[variable.path]` (the round's global weights).

    mu = 0 returns `optimizer` itself. Variables without an anchor (none, for a model built from the round's
    message) get no term."""
    if mu <= 0:
        return optimizer
    import keras

    constants = {path: keras.ops.convert_to_tensor(value) for path, value in anchors.items()}
    base: type[Any] = type(optimizer)

    class Proximal(base):
        def apply(self, grads: Any, trainable_variables: Any = None) -> Any:  # Keras calls it with tensors
            variables = list(trainable_variables) if trainable_variables is not None else self._trainable_variables
            grads = [g if g is None or v.path not in constants
                     else keras.ops.add(g, keras.ops.multiply(mu, keras.ops.subtract(v.value, constants[v.path])))
                     for g, v in zip(grads, variables)]
            return super().apply(grads, trainable_variables)

    Proximal.__name__ = Proximal.__qualname__ = f"Proximal{base.__name__}"
    return Proximal.from_config(optimizer.get_config())
