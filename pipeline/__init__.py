"""Streaming autoencoder anomaly detection: the Kafka worker and the contract shared with
the trainer."""

__version__ = "0.1.0"
