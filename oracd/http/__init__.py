"""The HTTP front door: Ollama's and OpenAI's APIs over the same warm, supervised llama-server.

``server.py`` (listeners, auth, limits, errors), ``generation.py`` (the JSON-RPC
generate path, with the question to llama-server as a parameter), ``core.py``
(the neutral request and its checks), one pure translation module per API.
"""
