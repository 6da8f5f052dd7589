"""What the coordinator and edge clients share: wire protocol, models, data.

Submodules: codec, messages, topics, models, datasets, partition."""
