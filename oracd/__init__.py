"""oracd: one warm llama-server behind a Unix-socket JSON-RPC API."""
__version__ = "0.1.0"
