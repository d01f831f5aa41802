"""Benchmark tooling: ``lmgate bench`` (a load generator for any OpenAI-compatible server) and the
benchmark of record (``make bench``: lmgate beside llama-server on the same GGUF)."""
