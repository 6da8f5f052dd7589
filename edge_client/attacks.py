"""Model-poisoning attacks a client applies to its own update: for robustness tests and benchmarks ONLY.

`--attack scale:50` sends global + 50 x (trained - global); `--attack sign_flip[:K]` sends global - K x that."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTACK_HELP = ("ROBUSTNESS TESTING ONLY: poison this client's update. scale:F multiplies the update delta "
               "(trained - global) by F; sign_flip[:K] sends -K times it (K = 1 by default)")


@dataclass(frozen=True)
class Attack:
    name: str      # "scale" or "sign_flip"
    factor: float  # the delta is multiplied by this

    @classmethod
    def parse(cls, spec: str) -> "Attack":
        """`scale:F` or `sign_flip[:K]`; ValueError naming the spec otherwise."""
        kind, _, arg = spec.partition(":")
        try:
            if kind == "scale" and arg:
                return cls("scale", float(arg))
            if kind == "sign_flip":
                k = float(arg) if arg else 1.0
                if k > 0:
                    return cls("sign_flip", -k)
        except ValueError:
            pass
        raise ValueError(f"--attack {spec!r}: use scale:F (e.g. scale:50) or sign_flip[:K] (K > 0)")

    def apply(self, global_weights: list[np.ndarray], trained: list[np.ndarray]) -> list[np.ndarray]:
        """global + factor x (trained - global) for every floating-point tensor, in its own dtype."""
        out = []
        for g, t in zip(global_weights, trained):
            if np.issubdtype(np.asarray(t).dtype, np.floating):
                g64 = np.asarray(g, dtype=np.float64)
                out.append((g64 + self.factor * (np.asarray(t, dtype=np.float64) - g64)).astype(np.asarray(t).dtype))
            else:
                out.append(t)
        return out
