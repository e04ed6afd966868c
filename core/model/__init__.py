"""The store's own model: its training sets, the LoRA training loop, export to GGUF, the offline evaluation,
the deploy gate, and the training schedule."""
