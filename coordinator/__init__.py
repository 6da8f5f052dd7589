"""The coordinator: runs federated rounds over MQTT, aggregates, evaluates and exports.

Start it with `python -m coordinator --config config/default.toml`."""
