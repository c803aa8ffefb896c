"""The sans-I/O WireGuard protocol core.

Nothing in this package opens a socket, starts a thread, reads a clock or draws global randomness: time comes in
as arguments and randomness from an injectable :class:`~wgpy.protocol.rng.RandomSource`, so that every rule can
be tested with a simulated clock and network.
"""
