"""The pure core: config parsing, the desired state, plans and their rendering.

Nothing here touches the kernel or the event loop, so all of it is unit-tested
without root. It imports nothing from offloadd.kernel, .service or .cli.
"""
