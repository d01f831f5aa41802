"""The engine-host kit both in-process engines (llamacpp, transformers) are built from: the supervised
engine process and its messages, the engine thread, the per-request inbox, the shared output rules
(text with stop strings, beam search) and the request limits every engine checks."""
