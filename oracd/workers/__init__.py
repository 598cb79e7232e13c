"""llama.cpp's RPC backend: rpc-server workers that hold part of a model for llama-server (``--rpc``).

``hello`` probes one worker, ``pool`` is what the supervisor knows and decides about them,
``launcher`` is the ``oracd-rpc-worker`` command that runs one.  (Not JSON-RPC: that is ``oracd.api``.)
"""
