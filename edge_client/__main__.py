"""Command line of the edge client: `python -m edge_client --broker HOST --client-id NAME --dataset D`.

Trains every round of the run on this device's data until the coordinator announces the end. Inference only:
`python -m edge_client serve ...` and `python -m edge_client predict MODEL IMAGES...` (serve.py, predict.py). A simulated
fleet for capacity planning: `python -m edge_client simulate --broker URL --clients N` (simulate.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_client.cli_common import default_state_dir, unique_client_id
from federation.cli.broker_flags import add_broker_flags, device_address
from federation.config.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from edge_client.client import UpdateTransform


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the log


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_client", description=__doc__.splitlines()[0], allow_abbrev=False,
                                epilog="Inference-only devices: python -m edge_client serve --help, "
                                       "python -m edge_client predict --help. A simulated fleet: python -m "
                                       "edge_client simulate --help. Exit codes: 2 bad arguments or data, "
                                       "3 the coordinator's model does not fit the data, 4 login refused, "
                                       "5 the client id is already online")
    add_broker_flags(p, unique_client_id(), "this device's name in topics; unique per process by default, give a "
                                            "stable name so the coordinator knows the device again after a restart")
    p.add_argument("--chunk-bytes", type=int, default=None,
                   help="split updates larger than this for brokers that cap message sizes (default: config, 0)")
    data = p.add_argument_group("local data")
    data.add_argument("--dataset", required=True,
                      help="fashion_mnist, mnist, cifar10, a folder of images with one sub-folder per class, an .npz "
                           "file (arrays x and y), or a .csv table or sensor series: its columns are read by the "
                           "names the coordinator sends (extra columns and any order are fine), scaled and "
                           "windowed as it says")
    data.add_argument("--data-dir", default=None, help="where offline copies of the built-in datasets live")
    data.add_argument("--partition", default=None, help="take part K of N of the training set, e.g. 1/2")
    data.add_argument("--scheme", default="iid", choices=("iid", "dirichlet", "shards"),
                      help="how the training set is split into parts (regression targets: iid only)")
    data.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (scheme dirichlet)")
    data.add_argument("--shards-per-client", type=int, default=2, help="label shards per part (scheme shards)")
    data.add_argument("--seed", type=int, default=0, help="partition and training seed")
    data.add_argument("--index-range", default=None, help="take training examples L:R instead of a part")
    data.add_argument("--max-examples", type=int, default=0,
                      help="use only the first N training examples (rows of a table, windows of a series)")
    data.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="resize image-folder images")
    p.add_argument("--state-dir", default=None,
                   help="where this device keeps state across restarts: the error-feedback residual of a compressed "
                        "uplink (default: $FEDMQ_STATE_DIR/<run>/<client id> or ~/.fedmq/state/<run>/<client id>)")
    model = p.add_argument_group("the coordinator's model (built from its architecture on the wire)")
    model.add_argument("--custom-objects", action="append", default=[], metavar="MODULE",
                       help="import MODULE first: it registers this device's custom layers with "
                            "keras.saving.register_keras_serializable (repeatable); nothing else is loaded")
    model.add_argument("--max-model-mb", type=float, default=0.0,
                       help="refuse models whose weights exceed this many MiB (training holds about 4 copies); "
                            "default: 1/16 of this machine's memory")
    p.add_argument("--max-rounds", type=int, default=0, help="leave after training this many rounds (0: all)")
    p.add_argument("--slowdown", type=float, default=1.0, metavar="N",
                   help="simulate a device N times slower than this one: after training, wait N - 1 times the "
                        "training time (tests and benchmarks of uneven fleets; default 1)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


SUBCOMMANDS = ("serve", "predict", "simulate")  # without one: train (the original command line, unchanged)


def main(argv: list[str] | None = None, *, transform_update: UpdateTransform | None = None) -> int:
    """The edge client's command line; `transform_update` is EdgeClient's hook (tests and benchmarks only)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:  # inference and the simulator: these import neither TensorFlow nor training code
        from importlib import import_module

        return import_module(f"edge_client.{argv[0]}").main(argv[1:])
    args = build_parser().parse_args(argv)
    if not 1.0 <= args.slowdown <= 1000:
        print(f"error: --slowdown {args.slowdown:g} is out of range: 1 (this device's speed) to 1000", file=sys.stderr)
        return 2
    from federation.cli.console import configure_logging, terminal_console

    console = terminal_console()  # a live progress panel on a terminal; plain log lines otherwise
    configure_logging(args.log_level, console)
    log = logging.getLogger("edge_client")
    try:
        cfg = load_settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    from edge_client.client import ClientSettings, EdgeClient, IncompatibleModelError
    from edge_client.local_data import DataChoice, load_local_data
    from edge_client.model_builder import ModelBuilder, import_custom_objects
    from federation.learning.datasets import DatasetError, DatasetNotFoundError
    from federation.transport.mqtt_link import BrokerRefusedError
    from federation.learning.partition import PartitionError

    try:
        address = device_address(args, cfg.broker, args.client_id)
        data = load_local_data(DataChoice(
            dataset=args.dataset, data_dir=args.data_dir, partition=args.partition, scheme=args.scheme,
            alpha=args.alpha, shards_per_client=args.shards_per_client, seed=args.seed,
            index_range=args.index_range, max_examples=args.max_examples,
            image_size=tuple(args.image_size) if args.image_size else None))
        settings = ClientSettings(
            client_id=args.client_id,
            broker=address,
            run=args.run or cfg.run.name, topic_prefix=args.topic_prefix or cfg.broker.topic_prefix,
            max_payload_mb=cfg.broker.max_payload_mb, seed=args.seed, slowdown=args.slowdown,
            chunk_bytes=cfg.broker.chunk_bytes if args.chunk_bytes is None else args.chunk_bytes,
            state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(args.run or cfg.run.name,
                                                                                    args.client_id))
        if args.max_model_mb < 0:
            raise ValueError(f"--max-model-mb {args.max_model_mb:g}: give a positive size, or 0 for the default")
        import_custom_objects(args.custom_objects)
        client = EdgeClient(settings, data, transform_update=transform_update,
                            model_builder=ModelBuilder(args.max_model_mb))
    except (DatasetNotFoundError, DatasetError, PartitionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from edge_client.id_claim import EXIT_ID_IN_USE, ClientIdInUseError, ensure_client_id_free

    try:
        ensure_client_id_free(address, client.topics.client_status(settings.client_id), settings.client_id,
                              client.receiver.max_payload)
    except ClientIdInUseError as exc:
        log.error("%s", exc)
        return EXIT_ID_IN_USE
    from edge_client.progress import ClientProgress

    client.progress = ClientProgress(settings.client_id, str(settings.broker), console,
                                     connected=client.link.connected)
    try:
        with client.progress:
            trained = client.run(max_rounds=args.max_rounds)
            client.progress.finished(f"left the run after training {trained} round(s) here")
    except IncompatibleModelError as exc:
        log.error("%s", exc)
        return 3
    except BrokerRefusedError as exc:
        log.error("%s", exc)
        return 4
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
