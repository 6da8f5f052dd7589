"""On-device inference with LiteRT (or tflite-runtime). Never imports TensorFlow or federation.learning:
inference-only devices run it (checked by the import contracts in pyproject.toml)."""
