"""A poisoning edge client, for robustness tests and benchmarks ONLY: the real edge client, with its update
transformed through EdgeClient's `transform_update` hook. The device client itself ships no attack code.

`python bench/attacks.py --attack scale:50 <edge_client arguments>` sends global + 50 x (trained - global);
`--attack sign_flip[:K]` sends global - K x that."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.attacks")

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


def main(argv: list[str] | None = None) -> int:
    """`--attack SPEC` and the edge client's own arguments: run the edge client, poisoning every update."""
    parser = argparse.ArgumentParser(prog="python bench/attacks.py", allow_abbrev=False, add_help=False,
                                     description="An edge client that poisons its updates (testing only).")
    parser.add_argument("--attack", required=True, metavar="SPEC", help=ATTACK_HELP)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        attack = Attack.parse(args.attack)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from edge_client.__main__ import main as edge_client_main

    log.warning("ATTACK MODE (robustness testing): every update's delta is multiplied by %g", attack.factor)
    return edge_client_main(rest, transform_update=attack.apply)


if __name__ == "__main__":
    sys.exit(main())
