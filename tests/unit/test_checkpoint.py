"""The coordinator's checkpoint: atomic round trip, and a fingerprint that changes only with what matters."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from coordinator.run_store import RunStore
from coordinator.checkpoint import (
    CHECKPOINT_FILE, Checkpoint, CheckpointMismatchError, check_resumable, load_checkpoint, run_fingerprint,
    save_checkpoint,
)
from coordinator.metrics import RoundMetrics
from federation.protocol.codec import TensorSpec
from federation.config.settings import load_settings, with_overrides

SPECS = [TensorSpec("m/dense/kernel", "float32", (4, 3)), TensorSpec("m/dense/bias", "float32", (3,))]


def _metrics(r: int) -> RoundMetrics:
    return RoundMetrics(round=r, clients=2, examples=100, test_loss=0.5, test_accuracy=0.8, bytes_in=10,
                        bytes_out=5, round_time_s=1.0, slowest_train_s=0.9, overhead_s=0.1, aggregate_s=0.01,
                        evaluate_s=0.1, client_ids=["a", "b"], rejected={"duplicate": 1})


def test_round_trip_is_exact_and_leaves_no_temporary_file(tmp_path) -> None:
    weights = [np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), np.arange(3, dtype=np.float32)]
    save_checkpoint(tmp_path, Checkpoint(2, weights, [_metrics(1), _metrics(2)], "f" * 64))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.round == 2 and loaded.fingerprint == "f" * 64
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded.weights, weights))
    assert loaded.metrics == [_metrics(1), _metrics(2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def test_a_newer_checkpoint_replaces_the_older(tmp_path) -> None:
    save_checkpoint(tmp_path, Checkpoint(1, [np.zeros(2, np.float32)], [_metrics(1)], "a" * 64))
    save_checkpoint(tmp_path, Checkpoint(2, [np.ones(2, np.float32)], [_metrics(1), _metrics(2)], "a" * 64))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.round == 2 and loaded.weights[0].tolist() == [1.0, 1.0]


def test_no_checkpoint_is_none(tmp_path) -> None:
    assert load_checkpoint(tmp_path) is None


def test_fingerprint_follows_model_data_and_training_but_not_broker_or_rounds() -> None:
    base = load_settings(None)
    fp = run_fingerprint(base, SPECS)
    assert run_fingerprint(with_overrides(base, broker={"port": 1999}, training={"rounds": 50},
                                          quorum={"min_clients": 7}), SPECS) == fp
    assert run_fingerprint(with_overrides(base, training={"learning_rate": 0.01}), SPECS) != fp
    assert run_fingerprint(with_overrides(base, model={"dataset": "mnist"}), SPECS) != fp
    assert run_fingerprint(base, [SPECS[0], TensorSpec("m/dense/bias", "float32", (4,))]) != fp


def test_mismatch_is_refused_with_a_message_saying_what_to_do(tmp_path) -> None:
    checkpoint = Checkpoint(1, [], [], "a" * 64)
    check_resumable(checkpoint, "a" * 64, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="Refusing to resume.*--run.on_existing new"):
        check_resumable(checkpoint, "b" * 64, tmp_path)


class _Store:
    """The coordinator's run store with the fingerprint of the run now."""

    def __init__(self, tmp_path, **run: object) -> None:
        settings = with_overrides(load_settings(None), run={"output_dir": str(tmp_path), "name": "r1", **run},
                                  training={"rounds": 3})
        self.store = RunStore(settings)
        self.run_dir = self.store.run_dir

    def _usable_checkpoint(self):
        return self.store.usable_checkpoint("a" * 64)


def _coordinator(tmp_path, **run: object) -> _Store:
    return _Store(tmp_path, **run)


def test_an_unfinished_run_is_resumed(tmp_path) -> None:
    save_checkpoint(_make_run_dir(tmp_path), Checkpoint(2, [], [_metrics(1), _metrics(2)], "a" * 64))
    store = _coordinator(tmp_path)
    checkpoint = store._usable_checkpoint()
    assert checkpoint is not None and checkpoint.round == 2
    assert [m.round for m in store.store.history] == [1, 2], "the resumed run's metrics so far"


def test_a_checkpoint_of_other_settings_is_refused(tmp_path) -> None:
    save_checkpoint(_make_run_dir(tmp_path), Checkpoint(2, [], [_metrics(1), _metrics(2)], "b" * 64))
    with pytest.raises(CheckpointMismatchError, match="Refusing to resume"):
        _coordinator(tmp_path)._usable_checkpoint()


def _set_aside(coordinator: _Store) -> None:
    """What the coordinator does when its first round starts (tests/integration/test_run_start.py: not before)."""
    assert [p.name for p in coordinator.run_dir.parent.iterdir() if p.name == "r1"] == ["r1"], "not moved yet"
    coordinator.store.claim(("a", "b"))
    assert (coordinator.run_dir / "models" / "labels.txt").read_text() == "a\nb\n"


def test_a_finished_run_or_on_existing_new_is_set_aside_not_deleted(tmp_path) -> None:
    save_checkpoint(_make_run_dir(tmp_path), Checkpoint(3, [], [_metrics(r) for r in (1, 2, 3)], "a" * 64))
    coordinator = _coordinator(tmp_path)
    assert coordinator._usable_checkpoint() is None
    _set_aside(coordinator)
    shutil.rmtree(tmp_path / "r1")  # the new run's (empty) folder
    save_checkpoint(_make_run_dir(tmp_path), Checkpoint(1, [], [_metrics(1)], "b" * 64))
    coordinator = _coordinator(tmp_path, on_existing="new")
    assert coordinator._usable_checkpoint() is None
    _set_aside(coordinator)
    shutil.rmtree(tmp_path / "r1")
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2 and all(name.startswith("r1.") for name in kept)
    assert all((tmp_path / name / CHECKPOINT_FILE).is_file() for name in kept)


def _make_run_dir(tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    return run_dir


def test_an_ended_run_is_not_continued_even_with_more_rounds(tmp_path) -> None:
    save_checkpoint(_make_run_dir(tmp_path), Checkpoint(2, [], [_metrics(1), _metrics(2)], "a" * 64, finished=True))
    assert load_checkpoint(tmp_path / "r1").finished
    coordinator = _coordinator(tmp_path)
    assert coordinator._usable_checkpoint() is None, "3 rounds planned now, but the 2-round run ended"
    _set_aside(coordinator)
    assert sorted(p.name.startswith("r1.") for p in tmp_path.iterdir()) == [False, True]


def test_the_run_store_writes_metrics_checkpoints_and_the_summary_after_claiming_the_folder(tmp_path) -> None:
    import json

    from coordinator.metrics import read_metrics

    settings = with_overrides(load_settings(None), run={"output_dir": str(tmp_path), "name": "r1"},
                              training={"rounds": 2})
    store = RunStore(settings)
    assert store.usable_checkpoint("a" * 64) is None and not store.run_dir.exists(), "nothing written yet"
    store.claim(("a", "b"))
    assert json.loads((store.run_dir / "config.json").read_text())["run"]["name"] == "r1"
    weights = [np.arange(3, dtype=np.float32)]
    store.round_closed(_metrics(1), weights, "a" * 64)
    checkpoint = load_checkpoint(store.run_dir)
    assert checkpoint is not None and checkpoint.round == 1 and not checkpoint.finished
    assert [m.round for m in read_metrics(store.metrics_path)] == [1]
    store.round_closed(_metrics(2), weights, "a" * 64)
    store.finished(2, weights, "a" * 64)
    checkpoint = load_checkpoint(store.run_dir)
    assert checkpoint is not None and checkpoint.finished and [m.round for m in checkpoint.metrics] == [1, 2]
    store.write_summary({"run": "r1", "rounds": 2})
    assert json.loads((store.run_dir / "summary.json").read_text()) == {"run": "r1", "rounds": 2}
    assert RunStore(settings).usable_checkpoint("a" * 64) is None, "a finished run is set aside, not resumed"


def test_moving_the_dataset_folder_does_not_refuse_a_resume() -> None:
    """Issue 11: the fingerprint included data_dir, so moving the dataset folder refused a resume."""
    base = load_settings(None)
    moved = with_overrides(base, model={"data_dir": "/mnt/elsewhere/datasets"})
    assert run_fingerprint(moved, SPECS) == run_fingerprint(base, SPECS)


def test_the_server_optimizers_moments_survive_a_checkpoint(tmp_path) -> None:
    """FedAdam's moments are saved beside the weights and come back as they were (a resume continues them)."""
    from coordinator.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from coordinator.server_optimizers import FedAdam

    opt = FedAdam()
    current = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    opt.step(current, [np.ones((2, 3), np.float32), np.full(4, -1.0, np.float32)])
    save_checkpoint(tmp_path, Checkpoint(1, current, [], "f" * 64, optimizer_state=opt.state()))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and len(loaded.weights) == 2
    assert set(loaded.optimizer_state) == {"rounds", "m.0", "m.1", "v.0", "v.1"}
    resumed = FedAdam()
    resumed.load_state(loaded.optimizer_state)
    assert resumed.rounds == 1
    np.testing.assert_array_equal(resumed.state()["v.1"], opt.state()["v.1"])
