"""Load tools for the hostile-network tests and benchmarks: ``tools.flood`` (handshake floods from spoofed
sources) and ``tools.loadgen`` (many real WireGuard clients driven by the wgpy core, and sequence-numbered UDP
flows). They are run inside network namespaces the tests create (``ip netns exec NS python3 -m tools.X``) and
only ever send to addresses given on their command line."""
