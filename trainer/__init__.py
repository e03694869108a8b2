"""Batch job that fits an autoencoder on normal records and publishes it to the model store."""
