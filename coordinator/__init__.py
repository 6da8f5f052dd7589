"""The coordinator: runs federated rounds over MQTT, aggregates, evaluates and exports.

Start it with `python -m coordinator --config config/default.toml`, or from Python with `run_coordinator` (below)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.api import resolve_settings, run_coordinator
    from coordinator.engine import RunResult
    from federation.config.settings import ConfigError, Settings, load_settings, settings_from_dict

# The Python API (README "Python API: running the coordinator"), imported on first use: `python -m coordinator`
# and the modules that only need a part of the package don't pay for the engine's imports.
_API = {
    "run_coordinator": "coordinator.api", "resolve_settings": "coordinator.api", "RunResult": "coordinator.engine",
    "Settings": "federation.config.settings", "ConfigError": "federation.config.settings",
    "load_settings": "federation.config.settings", "settings_from_dict": "federation.config.settings",
}
__all__ = ["ConfigError", "RunResult", "Settings", "load_settings", "resolve_settings", "run_coordinator",
           "settings_from_dict"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
