"""Programs that read what the worker wrote: ``alerts tail`` (print), ``alerts sink`` (copy to a
file or a webhook, the pattern for production consumers) and ``audit`` (account for every
input record through the scores and dead-letter topics).

May import: ``pipeline.contract``, ``pipeline.common``, ``pipeline.kafka``. Never the worker
(they read its topics, not its code) or the dev stack.
"""
