"""The running daemon: the event loop, its control socket, status, metrics, systemd.

It wires the core and the kernel edges together; it imports nothing from offloadd.cli.
"""
