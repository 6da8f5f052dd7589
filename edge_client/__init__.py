"""The edge client: trains the global model on data that stays on the device, and publishes updates.

Start it with `python -m edge_client --broker HOST --client-id NAME --dataset fashion_mnist --partition 1/2`."""
