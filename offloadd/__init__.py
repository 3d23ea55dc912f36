"""offloadd: keeps nftables flowtables in step with a gateway's interfaces.

The package is layered: ``config`` and ``model``/``plan`` are pure; ``nft``,
``links`` and ``conntrack`` touch the kernel; ``daemon`` runs the loop.
"""

__version__ = "0.1.0"
