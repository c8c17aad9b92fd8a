"""llmdd.transfer: links between clusters and KV-cache pulls and pushes over Mooncake.

Imported lazily by llmdd (never by `import llmdd`); Mooncake itself is imported on the first
link (llmdd[transfer] extra). TransferAgent is the whole surface; the control protocol it speaks
with its peers is described in docs/control-protocol.md.
"""
from .._limits import MAX_CLUSTERS_PER_CALL
from .._options import TRANSFER_PROTOCOLS as PROTOCOLS
from ._agent import TransferAgent
from ._mooncake import INSTALL_HINT
from ._protocol import MAX_BODY_BYTES, PROTOCOL_VERSION

__all__ = ["INSTALL_HINT", "MAX_BODY_BYTES", "MAX_CLUSTERS_PER_CALL", "PROTOCOLS", "PROTOCOL_VERSION",
           "TransferAgent"]
