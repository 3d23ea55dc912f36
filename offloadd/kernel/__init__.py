"""The edges that touch the kernel: libnftables, rtnetlink, ctnetlink, routes.

Each sits behind a small interface the service layer uses (and unit tests fake).
It may import offloadd.core, never offloadd.service or offloadd.cli.
"""
