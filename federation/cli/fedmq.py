"""The `fedmq` console command: one entry point for every role, each the same as its `python -m` form.

    fedmq coordinator ...   = python -m coordinator ...
    fedmq client ...        = python -m edge_client ...        (a training device)
    fedmq serve ...         = python -m edge_client serve ...  (an inference-only device: no TensorFlow)
    fedmq predict ...       = python -m edge_client predict ...
    fedmq broker ...        = python -m broker ...
    fedmq demo ...          = python -m demo ...

The role's module is imported by name only once chosen, so `fedmq serve` loads no training code and
`fedmq --version` loads nothing but the version."""

from __future__ import annotations

import sys
from importlib import import_module

from federation.cli.version import VERSION_TEXT

# command -> (module with main(argv) -> int, arguments put before the user's)
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "coordinator": ("coordinator.__main__", []),
    "client": ("edge_client.__main__", []),
    "serve": ("edge_client.__main__", ["serve"]),
    "predict": ("edge_client.__main__", ["predict"]),
    "broker": ("broker.__main__", []),
    "demo": ("demo.__main__", []),
}

USAGE = "usage: fedmq {" + ",".join(COMMANDS) + "} [ARGS ...] | --version\n\n" + __doc__.split("\n\n")[1] + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(VERSION_TEXT)
        return 0
    if argv[0] not in COMMANDS:
        print(f"fedmq: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module, prefix = COMMANDS[argv[0]]
    code: int | None = import_module(module).main(prefix + argv[1:])
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
