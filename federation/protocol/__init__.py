"""The wire protocol: messages, tensors, topics, chunks, the deployed-model record and its delivery.
Pure msgpack, numpy and hashlib: no MQTT client, no TensorFlow (PROTOCOL.md)."""
