"""``call_sync``: one blocking call to oracd, for code that cannot await (Popen-style methods, oracctl).

The implementation is the protocol's one blocking client (``oracd_protocol.blocking``);
this module keeps the import path ``oracd_client.sync.call_sync`` working.
"""
from oracd_protocol.blocking import call_sync

__all__ = ["call_sync"]
