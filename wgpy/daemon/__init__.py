"""wgpyd: the Linux userspace daemon, a drop-in for ``wireguard-go IFACE``.

``main`` parses the command line and daemonises, ``loop`` is the single epoll event loop that drives the TUN
device, the UDP sockets, the UAPI socket, rtnetlink and the core's timers, ``log`` writes wireguard-go's log line
style and ``keylog`` writes Wireshark's WireGuard key log when asked to.
"""
