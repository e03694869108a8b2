"""The contract the trainer and the worker share: one definition of each thing both sides use.

Feature spec and Arrow encoding (``features``, ``tabular``), the autoencoders (``models``),
reconstruction scoring (``scoring``), the model artifact (``artifact``), the alert event
(``alerts``), dead letters (``deadletter``), model announcements (``announce``) and the one
exception tree (``exceptions``).

May import: the standard library, numpy, torch, pyarrow, pydantic, safetensors, msgspec.
Never imports the worker, the alert consumers, offline scoring, the dev stack or Kafka clients:
the trainer, the worker and batch scoring all build on it.
"""
