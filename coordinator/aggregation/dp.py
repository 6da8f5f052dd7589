"""Central differential privacy (DP-FedAvg, McMahan et al., 2018): clip each client's delta to clip_norm, sum,
add Gaussian noise of std noise_multiplier x clip_norm, divide by n. Epsilon comes from dp-accounting's RDP accountant.

Client-level DP: neighbouring runs differ in one client's whole contribution. Unweighted (num_examples ignored)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from coordinator.aggregation.base import Aggregator, ClientResult, Weights, check_result, is_float
from coordinator.aggregation.clipping import clip_result
from coordinator.aggregation.deltas import add_into

log = logging.getLogger(__name__)


class PrivacyLedger:
    """The (epsilon, delta) spent so far, composed round by round with dp-accounting's RDP accountant.

    A round is one Gaussian mechanism of noise multiplier z on a sum of sensitivity clip_norm; with a sampling
    rate q < 1 it is analysed as Poisson subsampling (privacy amplification) of that mechanism."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        from dp_accounting import rdp  # imported here: only a DP run needs dp-accounting (and scipy)

        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.rounds = 0
        self._accountant = rdp.RdpAccountant()

    def spend_round(self, sampling_rate: float, noise_multiplier: float | None = None) -> float:
        """Compose one more round (of another noise multiplier if given); return the epsilon spent so far."""
        from dp_accounting import dp_event

        event = dp_event.GaussianDpEvent(noise_multiplier or self.noise_multiplier)
        if sampling_rate < 1.0:
            event = dp_event.PoissonSampledDpEvent(sampling_rate, event)
        self._accountant.compose(event)
        self.rounds += 1
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return float(self._accountant.get_epsilon(self.delta)) if self.rounds else 0.0


class GaussianDP(Aggregator):
    """Streaming: a float64 sum of clipped deltas, so O(model) memory like FedAvg."""

    streaming = True

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float = 1e-5, total_clients: int = 0,
                 rng: np.random.Generator | None = None) -> None:
        if clip_norm <= 0 or noise_multiplier <= 0:
            raise ValueError(f"DP needs clip_norm > 0 and noise_multiplier > 0, got {clip_norm}, {noise_multiplier}")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.total_clients = total_clients
        self.ledger = PrivacyLedger(noise_multiplier, delta)
        self._rng = rng if rng is not None else np.random.default_rng()  # OS entropy: noise must be unpredictable
        self._global: Weights = []
        self._sum: list[np.ndarray] = []
        self._count = 0
        self._clipped: list[str] = []
        self._result: Weights | None = None
        self._report: dict[str, Any] = {}

    def begin(self, global_weights: Weights) -> None:
        self._global = [np.asarray(w) for w in global_weights]
        self._sum = [np.zeros(np.shape(w), dtype=np.float64) for w in global_weights]
        self._count = 0
        self._clipped = []
        self._result = None
        self._report = {}

    def add(self, result: ClientResult) -> None:
        if self._result is not None:
            raise ValueError("GaussianDP: the round was already aggregated; call begin() first")
        check_result(result, self._global)
        clipped, _, was_clipped = clip_result(result, self._global, self.clip_norm)
        if clipped.deltas is not None:   # a compressed uplink: decoded deltas, a top-k one added sparsely
            for acc, d, g in zip(self._sum, clipped.deltas, self._global):
                if is_float(g):
                    add_into(acc, d)
        else:
            for acc, w, g in zip(self._sum, clipped.weights, self._global):
                if is_float(g):
                    acc += w    # in place, widened to float64 on the fly: no temporary copies
                    acc -= g
        self._count += 1
        if was_clipped:
            self._clipped.append(result.client_id)

    def resume(self, reports: list[dict[str, Any]]) -> None:
        """Count the privacy already spent by the rounds before a resume, so epsilon keeps adding up."""
        for report in reports:
            if "dp_sampling_rate" in report:
                self.ledger.spend_round(float(report["dp_sampling_rate"]), float(report["dp_noise_multiplier"]))
        if self.ledger.rounds:
            log.info("differential privacy: %d earlier round(s) already spent epsilon %.4g", self.ledger.rounds,
                     self.ledger.epsilon)

    def sampling_rate(self, n: int) -> float:
        return min(1.0, n / self.total_clients) if self.total_clients else 1.0

    def result(self) -> Weights:
        """Noised mean of the clipped deltas added to the global model; computed once per round (calling it
        again returns copies of the same weights and spends no more privacy)."""
        if not self._count:
            raise ValueError("GaussianDP: no update was added this round")
        if self._result is None:
            sigma = self.noise_multiplier * self.clip_norm
            out = []
            for acc, g in zip(self._sum, self._global):
                if is_float(g):
                    noisy = acc + self._rng.normal(0.0, sigma, size=acc.shape)
                    out.append((np.asarray(g, dtype=np.float64) + noisy / self._count).astype(g.dtype))
                else:
                    out.append(np.array(g))  # nothing private to release: keep the global value
            q = self.sampling_rate(self._count)
            epsilon = self.ledger.spend_round(q)
            self._result = out
            self._report = {"dp_noise_multiplier": self.noise_multiplier, "dp_noise_std": sigma / self._count,
                            "dp_sampling_rate": q, "dp_rounds": self.ledger.rounds, "dp_epsilon": round(epsilon, 6),
                            "dp_delta": self.ledger.delta, "clip_norm": self.clip_norm,
                            "clipped": sorted(self._clipped)}
            log.info("differential privacy: noise std %.3g on the mean of %d clipped updates; spent epsilon %.4g "
                     "at delta %g after %d round(s)", sigma / self._count, self._count, epsilon, self.ledger.delta,
                     self.ledger.rounds)
        return [np.array(w) for w in self._result]

    @property
    def count(self) -> int:
        return self._count

    def report(self) -> dict[str, Any]:
        return dict(self._report)
