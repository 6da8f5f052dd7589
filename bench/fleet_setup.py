"""Fleets and read-outs shared by the uneven-devices, non-IID and Flower benchmarks: data locations, the edge
clients' partition arguments, the machine's load average, and accuracy by round or by wall-clock time."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from federated_run import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"   # CI clones and /work/<helper> have ../shared beside them
DATASETS = ("mnist", "fashion_mnist", "cifar10")
CIFAR_TAR = SHARED_DATA / "cifar10_jpg" / "cifar10-jpg.tar.gz"
CIFAR_CACHE = REPO_ROOT / "bench" / "results" / "cifar10_jpg"


@dataclass(frozen=True)
class DataSource:
    """How the coordinator and the edge clients find one data set: the name or folder both pass as --dataset,
    and the offline data folder (model.data_dir / --data-dir; "" when the product's own search finds it)."""

    name: str          # the data set the tables call it by
    dataset: str       # --dataset / model.dataset: a built-in name or an image folder with train/ and test/
    data_dir: str = ""

    def coordinator_overrides(self) -> dict[str, str]:
        overrides = {"model.dataset": self.dataset}
        if self.data_dir:
            overrides["model.data_dir"] = self.data_dir
        return overrides

    def client_args(self) -> list[str]:
        return ["--dataset", self.dataset] + (["--data-dir", self.data_dir] if self.data_dir else [])


def data_source(name: str, shared_data: Path = SHARED_DATA) -> DataSource:
    """The data source for mnist, fashion_mnist or cifar10: MNIST from the shared idx files, Fashion-MNIST from the
    product's own search (Debian's copy, else the shared files), CIFAR-10 from the shared JPEG archive, extracted
    once into bench/results/cifar10_jpg (an image folder). Raises SystemExit with the fix when data is missing."""
    if name == "cifar10":
        from cifar10_fedavg import DataError, ensure_extracted

        try:
            folder = ensure_extracted(shared_data / "cifar10_jpg" / "cifar10-jpg.tar.gz", CIFAR_CACHE)
        except DataError as exc:
            raise SystemExit(f"error: {exc}") from exc
        return DataSource("cifar10", str(folder))
    if name == "fashion_mnist":
        debian = Path("/usr/share/datasets/fashion-mnist")
        fashion_dir = "" if debian.is_dir() else str(shared_data / "fashion_mnist")
        return DataSource("fashion_mnist", "fashion_mnist", fashion_dir)
    if name == "mnist":
        folder = shared_data / "mnist"
        if not (folder / "train-images-idx3-ubyte.gz").is_file():
            raise SystemExit(f"error: MNIST not found in {folder}: this benchmark reads the shared idx files "
                             f"(../shared/data/mnist beside the repository); pass --shared-data DIR")
        return DataSource("mnist", "mnist", str(folder))
    raise SystemExit(f"error: unknown data set {name!r}; choose from {', '.join(DATASETS)}")


def partition_args(index: int, num_parts: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0,
                   max_examples: int = 0) -> list[str]:
    """The edge client's arguments for part index+1 of num_parts (federation.learning.partition's schemes)."""
    args = ["--partition", f"{index + 1}/{num_parts}", "--scheme", scheme, "--seed", str(seed)]
    if scheme == "dirichlet":
        args += ["--alpha", f"{alpha:g}"]
    if max_examples:
        args += ["--max-examples", str(max_examples)]
    return args


def load_average() -> str:
    """/proc/loadavg as it reads (1, 5 and 15 minute load, running/total tasks, last pid); "" where absent."""
    try:
        return Path("/proc/loadavg").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def time_to_accuracy(metrics: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Seconds from the first round's start (elapsed_s) to the first round or step at or above target; None
    when the run never got there."""
    for row in metrics:
        if float(row["test_accuracy"]) >= target:
            return float(row["elapsed_s"])
    return None


def accuracy_at_round(metrics: Sequence[Mapping[str, Any]], round_number: int) -> float | None:
    """Test accuracy after round (or async step) round_number; None when the run stopped before it."""
    for row in metrics:
        if int(row["round"]) == round_number:
            return float(row["test_accuracy"])
    return None


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"
