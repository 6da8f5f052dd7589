"""The device simulator behind `python -m edge_client simulate`: many light simulated devices per process, each its
own MQTT connection speaking PROTOCOL.md, for capacity planning before a real rollout (README "Simulating a fleet")."""
