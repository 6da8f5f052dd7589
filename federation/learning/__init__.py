"""Learning: Keras model builders, dataset loading and partitioning. Training side only (TensorFlow)."""
