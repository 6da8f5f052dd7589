"""The MQTT transport: broker addresses, the paho connection, connection diagnosis and the bounded inbox."""
