"""Model files: the store (names confined to the models dirs, listing), GGUF headers, quantize."""
