"""Multi-Krum (Blanchard et al., 2017): score each update by the summed squared distance to its n - f - 2
nearest neighbours, keep the m best-scored ones and average them (unweighted).

Tolerates f arbitrary updates among n >= 2f + 3. Needs every update in memory (O(n x model)) plus n x n distances."""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import Weights, is_float
from coordinator.aggregation.buffered import BufferedAggregator
from federation.config.settings import krum_min_updates


class MultiKrum(BufferedAggregator):
    name = "multi_krum"

    def __init__(self, byzantine: int = 1, select: int = 0) -> None:
        if byzantine < 0 or select < 0:
            raise ValueError(f"krum byzantine and select must be >= 0, got {byzantine}, {select}")
        super().__init__()
        self.byzantine = byzantine
        self.select = select

    def scores(self) -> np.ndarray:
        """Krum score of every buffered update (lower: closer to its neighbours)."""
        n, f = len(self._updates), self.byzantine
        distances = np.zeros((n, n))
        for i, g in enumerate(self._global):  # on deltas: same distances, smaller magnitudes, less rounding
            if not is_float(g):
                continue  # counters and states are not aggregated, so they don't score
            base = np.asarray(g, dtype=np.float64).ravel()
            x = np.stack([np.asarray(u.weights[i], dtype=np.float64).ravel() - base for u in self._updates])
            sq = np.einsum("ij,ij->i", x, x)
            distances += sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
        np.maximum(distances, 0.0, out=distances)
        np.fill_diagonal(distances, np.inf)
        neighbours = n - f - 2
        return np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)

    def result(self) -> Weights:
        self._require_updates()
        n, f = len(self._updates), self.byzantine
        if n < krum_min_updates(f):
            raise ValueError(f"Multi-Krum with f = {f} needs at least {krum_min_updates(f)} updates, got {n}")
        m = min(self.select or n - f, n)
        chosen = np.argsort(self.scores(), kind="stable")[:m]
        ids = [self._updates[i].client_id for i in chosen]
        self._report = {"krum_selected": sorted(ids),
                        "krum_excluded": sorted(u.client_id for u in self._updates if u.client_id not in ids)}
        kept = [self._updates[i] for i in sorted(chosen)]
        out = []
        for i, g in enumerate(self._global):
            if not is_float(g):  # a counter or a state: keep the global value
                out.append(np.array(g))
                continue
            total = np.zeros(np.shape(g), dtype=np.float64)
            for u in kept:
                total += np.asarray(u.weights[i], dtype=np.float64)
            out.append((total / len(kept)).astype(g.dtype))
        return out

    def combine(self, stack: np.ndarray) -> np.ndarray:  # not used: result() selects whole updates
        raise NotImplementedError
