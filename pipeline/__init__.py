"""Streaming autoencoder anomaly detection: the Kafka worker and the contract it shares with the trainer."""

__version__ = "0.1.0"
