"""Streaming autoencoder anomaly detection.

The Kafka worker and the contract it shares with the trainer.
"""

__version__ = "0.1.0"
