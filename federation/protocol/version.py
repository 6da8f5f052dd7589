"""Version numbers of the fedmq software and of its wire protocol.

The protocol version travels in every message; see PROTOCOL.md."""

SOFTWARE_VERSION = "0.1.0"
PROTOCOL_VERSION = 1
