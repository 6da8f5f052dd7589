"""How a device's class labels map to the coordinator's classes, by name (a subset is the normal non-IID case;
a class the coordinator doesn't have refuses the model)."""

from __future__ import annotations

import numpy as np

from edge_client.errors import IncompatibleModelError
from federation.protocol.messages import ModelInfo


def label_map(local: tuple[str, ...], info: ModelInfo, num_labels_used: int) -> np.ndarray | None:
    """How this device's label indices map to the coordinator's classes, by name: None for the identity.

    Raises IncompatibleModelError when the local classes are not the coordinator's (by count, or by a name it
    does not have). A device holding a subset of the classes, named the same, is the normal non-IID case."""
    if not info.class_names:  # a coordinator that sends no names: only the count can be checked
        if num_labels_used > info.num_classes:
            raise IncompatibleModelError(
                f"the coordinator's model has {info.num_classes} classes, but local labels go up to "
                f"{num_labels_used - 1}")
        return None
    if tuple(local) == tuple(info.class_names):
        return None
    unknown = [name for name in local if name not in info.class_names]
    if unknown or not local:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise IncompatibleModelError(
            f"this device's classes do not match the coordinator's: {len(local)} local classes "
            f"({shown or 'none'} not among the coordinator's {info.num_classes}: "
            f"{', '.join(repr(n) for n in info.class_names[:10])}{', ...' if info.num_classes > 10 else ''}). "
            "Rename the local class folders to the coordinator's class names (a subset is fine), or join a run "
            "of this data's classes")
    index = {name: i for i, name in enumerate(info.class_names)}
    return np.array([index[name] for name in local], dtype=np.int64)
