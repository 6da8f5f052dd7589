"""The coordinator's data for a run ([model] dataset), its labels read for the model's task: a table's or an .npz
file's labels become class indices for a classifier and float targets for a regression model.

The run, the centralized baseline and `evaluate` read their data through here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coordinator.evaluation import table_options
from federation.learning.datasets import Dataset, load_dataset
from federation.learning.own_data import is_own_data_file
from federation.learning.tables import DataMismatchError

if TYPE_CHECKING:
    from federation.config.settings import Settings

log = logging.getLogger(__name__)


def load_run_dataset(settings: "Settings", task: str | None = None) -> Dataset:
    """[model] dataset, with its labels read for `task`, or when None for the task the model fixes ([model] path or
    builder: its compile recipe, see model_source.model_task); images are always a classification's. A file whose
    labels are float values can only be a regression's: read so when the model does not say."""
    from federation.learning.model_source import ModelChoice, model_task

    s = settings
    image_size = (s.model.image_size[0], s.model.image_size[1]) if s.model.image_size else None

    def load(wanted: str) -> Dataset:
        return load_dataset(s.model.dataset, data_dir=s.model.data_dir or None, image_size=image_size,
                            table=table_options(s.data), task=wanted)

    if not is_own_data_file(s.model.dataset):
        return load(task or "classification")
    if task is not None:
        return load(task)
    try:
        dataset = load("classification")
    except DataMismatchError:  # float targets: read them as such
        dataset = load("regression")
    wanted = model_task(ModelChoice(s.model.name, s.model.path, s.model.builder), dataset.input_shape)
    if wanted is not None and wanted != dataset.task:
        log.info("%s: read for a %s, as the model's compile recipe says", s.model.dataset, wanted)
        dataset = load(wanted)
    return dataset
