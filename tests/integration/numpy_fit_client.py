"""A device whose training code is the user's own, in numpy (no TensorFlow imported): it joins a run through
the Python API, edge_client.api.start_client, with a fit function that trains the coordinator's softmax
regression (tests/integration/own_models.py) by gradient descent. Used by test_own_model.py."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

import numpy as np

from edge_client.api import FitResult, ModelInfo, TrainingPlan, start_client
from federation.learning.datasets import load_dataset


def make_fit(x: np.ndarray, y: np.ndarray) -> Callable[[list[np.ndarray], TrainingPlan, ModelInfo], FitResult]:
    """A fit function over this device's data: softmax regression by minibatch gradient descent."""
    features = x.reshape(len(x), -1).astype(np.float32) / 255.0

    def fit(weights: list[np.ndarray], plan: TrainingPlan, model: ModelInfo) -> FitResult:
        kernel, bias = (w.astype(np.float64) for w in weights)
        rng = np.random.default_rng(len(y))
        lr = 0.5   # plain SGD on the softmax: this device's own choice, whatever the recipe says
        for _ in range(plan.epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), plan.batch_size):
                batch = order[start:start + plan.batch_size]
                logits = features[batch] @ kernel + bias
                probs = np.exp(logits - logits.max(1, keepdims=True))
                probs /= probs.sum(1, keepdims=True)
                probs[np.arange(len(batch)), y[batch]] -= 1.0
                kernel -= lr * features[batch].T @ probs / len(batch)
                bias -= lr * probs.mean(0)
        logits = features @ kernel + bias
        logits -= logits.max(1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]))
        accuracy = float((logits.argmax(1) == y).mean())
        return FitResult([kernel.astype(np.float32), bias.astype(np.float32)], len(y),
                         {"loss": loss, "accuracy": accuracy})

    return fit


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--run", default="demo")
    p.add_argument("--client-id", required=True)
    p.add_argument("--index-range", default="0:1000")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start, end = (int(v) for v in args.index_range.split(":"))
    data = load_dataset("fashion_mnist")
    x, y = data.x_train[start:end], data.y_train[start:end]
    trained = start_client(f"{args.broker}:{args.port}", args.client_id, fit=make_fit(x, y), num_examples=len(y),
                           run=args.run)
    print(f"numpy client: trained {trained} rounds; tensorflow imported: {'tensorflow' in sys.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
