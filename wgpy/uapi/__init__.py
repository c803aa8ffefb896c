"""The cross-platform userspace API (UAPI): request parsing, server-side apply, the socket server and the client.

``request`` turns bytes into a validated, immutable operation list; ``apply`` runs one against a Device (all or
nothing) and formats ``get`` answers; ``server`` frames requests on the non-blocking Unix socket.
"""
