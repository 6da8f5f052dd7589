"""The end of a run's release: the Keras model and labels saved, each TFLite variant converted, written and loaded
once (the one load both measures its accuracy and reads the formats the deployment announces), then deployed.

The final publishes themselves (run end, cleared model, offline state) go out through coordinator.node."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator.deploy import Deployer
from coordinator.evaluation import REGRESSION, Evaluation, evaluate_loaded
from coordinator.export import ACCURACY_BOUND_POINTS, RMSE_BOUND_PERCENT, convert_to_tflite, write_labels, write_tflite
from federation.inference.runtime import TFLiteClassifier
from federation.config.settings import Settings

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass
class Exported:
    """One TFLite variant as written, loaded once: its bytes for the deployment, its loaded classifier."""

    variant: str
    path: Path
    content: bytes
    classifier: TFLiteClassifier
    evaluation: Evaluation


class Release:
    """Saves and exports the final model of a run into its folder, and deploys the deploy variant."""

    def __init__(self, settings: Settings, run_dir: Path, class_names: tuple[str, ...], deployer: Deployer) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.class_names = tuple(class_names)
        self.deployer = deployer
        self.exported: dict[str, Exported] = {}

    def variants(self) -> list[str]:
        """export.tflite, and the deploy variant when deploying, each once."""
        deploy = [self.settings.deploy.variant] if self.settings.deploy.enabled else []
        return list(dict.fromkeys([*self.settings.export.tflite, *deploy]))

    def save_keras(self, model: "keras.Model") -> None:
        model.save(self.run_dir / "model.keras")
        write_labels(self.run_dir, self.class_names)  # beside model.keras and the .tflite files

    def export(self, model: "keras.Model", x_test: np.ndarray, y_test: np.ndarray,
               keras: Evaluation) -> dict[str, dict[str, Any]]:
        """Every variant converted, written, loaded and evaluated once; summary.json's `tflite` entries."""
        out: dict[str, dict[str, Any]] = {}
        representative = x_test[: self.settings.export.representative_examples]
        task = REGRESSION if keras.is_regression else "classification"
        for variant in self.variants():
            content = convert_to_tflite(model, variant, representative, self.settings.export.tflite_runtime_compat,
                                        self.class_names, task)
            path = write_tflite(self.run_dir, variant, content)
            classifier = TFLiteClassifier(content)
            ev = evaluate_loaded(classifier, x_test, y_test, task)
            self.exported[variant] = Exported(variant, path, content, classifier, ev)
            if keras.is_regression:
                out[variant] = _regression_entry(variant, path, content, ev, keras)
                continue
            keras_accuracy = keras.accuracy
            delta = round(100 * (ev.accuracy - keras_accuracy), 4)
            out[variant] = {"path": path.name, "bytes": len(content), "accuracy": ev.accuracy,
                            "examples": ev.examples, "delta_points": delta,
                            "bound_points": ACCURACY_BOUND_POINTS[variant],
                            "within_bound": abs(delta) <= ACCURACY_BOUND_POINTS[variant]}
            log.info("TFLite %s: %s, %d bytes, test accuracy %.4f (Keras %.4f, delta %+.2f points)", variant,
                     path, len(content), ev.accuracy, keras_accuracy, delta)
        return out

    def deploy(self, round_: int, keras: Evaluation | None) -> dict[str, Any] | None:
        """Publish the exported deploy variant for inference-only devices; its record for summary.json."""
        if not self.settings.deploy.enabled:
            return None
        exported = self.exported.get(self.deployer.variant)
        if exported is None:
            log.error("the %s model to deploy was not exported", self.deployer.variant)
            return None
        try:
            record = self.deployer.publish(exported.content, round_, exported.evaluation, keras,
                                           classifier=exported.classifier)
        except Exception:
            log.exception("deploying the final %s model failed", self.deployer.variant)
            return None
        return record.to_json()


def _regression_entry(variant: str, path: Path, content: bytes, ev: Evaluation, keras: Evaluation) -> dict[str, Any]:
    """summary.json's `tflite` entry of a regression's variant: its errors, and its RMSE against the Keras model's."""
    assert ev.rmse is not None and keras.rmse is not None
    delta = round(100 * (ev.rmse - keras.rmse) / keras.rmse, 4) if keras.rmse > 0 else 0.0
    log.info("TFLite %s: %s, %d bytes, test MAE %.4g, RMSE %.4g (Keras %.4g, %+.2f %%)", variant, path, len(content),
             ev.mae, ev.rmse, keras.rmse, delta)
    return {"path": path.name, "bytes": len(content), "mae": ev.mae, "rmse": ev.rmse, "examples": ev.examples,
            "rmse_delta_percent": delta, "bound_percent": RMSE_BOUND_PERCENT[variant],
            "within_bound": delta <= RMSE_BOUND_PERCENT[variant]}
