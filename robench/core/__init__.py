"""Foundations with no robench concept: files and output checks, text, stats, caches, distributed ranks.

Modules: ``files`` (reading inputs, atomic writes), ``outputs`` (output paths checked before any work),
``text`` (cells and Markdown-safe labels), ``stats`` (exact tests and intervals), ``cache`` (where robench
keeps things), ``distributed`` (torchrun ranks, shards, gather), ``fields`` (a configuration field's rule,
checked to a FieldError), ``yaml_read`` (hand-written YAML with lines for messages), ``schema_errors`` (a
pydantic error as one line), ``stop`` (a stop request that attack loops check each iteration). Nothing is
re-exported: ``distributed`` imports torch, and the CLI imports ``files`` before it.
"""
