"""The local development stack: a real Apache Kafka broker and Prometheus on loopback, sample
sensor data and ``make demo``. For laptops, tests and CI; not part of the runtime.

The Docker image leaves this package out (``.dockerignore``) and nothing on the worker's,
the alert consumers' or the trainer's path imports it; the CLI commands that need it
(``kafka``, ``demo``, ``sample-data``) import it on demand and say so when it is absent.
May import anything in ``pipeline`` and ``trainer``.
"""
