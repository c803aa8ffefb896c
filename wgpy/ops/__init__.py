"""Operating WireGuard: provisioning (with QR codes), key rotation, a Prometheus exporter and an audit log.

Everything here works against any daemon that speaks the cross-platform UAPI (wgpyd or wireguard-go) and edits
wg-quick configuration files through :mod:`wgpy.config`, so files stay readable by the stock tools.
"""
