"""Why a device can't train the coordinator's model: the one error a device publishes in its status `error`
and exits 3 with, whether the data, the architecture or the user's own training code is the cause."""

from __future__ import annotations

from federation.errors import FedmqError


class IncompatibleModelError(FedmqError, RuntimeError):
    """The coordinator's model can't be trained on this device: its data, its Keras or its memory don't fit."""
