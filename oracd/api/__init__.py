"""What clients talk to: the Unix socket (``listener``), one ``connection`` per client, JSON-RPC
dispatch (``jsonrpc``), and the methods (``methods``, ``generate``)."""
