"""The coordinator's Python API: run a federated training from Python, with settings built in code, and get the
run's RunResult back (README "Python API: running the coordinator").

    from coordinator import run_coordinator, settings_from_dict
    result = run_coordinator(settings_from_dict({"run": {"name": "demo"}, "training": {"rounds": 3}}))"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.config.settings import Settings, load_settings, settings_from_dict

if TYPE_CHECKING:
    from coordinator.engine import RunResult
    from coordinator.progress import RunProgress
    from federation.learning.datasets import Dataset

log = logging.getLogger(__name__)

SettingsSource = Settings | Mapping[str, Any] | str | Path | None


def resolve_settings(settings: SettingsSource = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from any of the forms run_coordinator takes: a Settings, a dict of sections (settings_from_dict),
    a TOML file's path, or None for the defaults; `overrides` ("section.key": value) on top. ConfigError when a
    value is unknown, of the wrong type or out of range."""
    extra = dict(overrides or {})
    if isinstance(settings, Settings):
        if not extra:
            return settings
        from dataclasses import asdict

        return settings_from_dict(asdict(settings), extra)
    if isinstance(settings, (str, Path)):
        return load_settings(settings, extra)
    return settings_from_dict(dict(settings) if settings is not None else None, extra)


def run_coordinator(settings: SettingsSource = None, *, overrides: Mapping[str, Any] | None = None,
                    dataset: "Dataset | None" = None, progress: "RunProgress | None" = None,
                    client_id: str | None = None) -> "RunResult":
    """Run (or resume) a federated training as `python -m coordinator run` does, in this process, and return its
    RunResult: the run folder, rounds completed, why it ended, the final accuracy (or a regression's MAE and RMSE),
    the TFLite exports and the deployment.

    `settings`: a Settings, a dict of sections, a TOML path or None (defaults), with `overrides` on top; `dataset`:
    evaluation data already in memory instead of [model] dataset; `progress`: a coordinator.progress.RunProgress
    to follow the run (a live panel when given a rich console). It blocks until the run ends; the broker must be
    running ([broker] host and port). Errors are FedmqError subclasses with a message saying what to fix
    (ConfigError, DatasetError, CheckpointMismatchError, BrokerRefusedError, FinalPublishError...)."""
    from coordinator.engine import Coordinator

    resolved = resolve_settings(settings, overrides)
    log.info("run %r from Python: broker %s:%d, results in %s", resolved.run.name, resolved.broker.host,
             resolved.broker.port, resolved.run_dir)
    return Coordinator(resolved, dataset=dataset, progress=progress, client_id=client_id).run()
