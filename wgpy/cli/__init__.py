"""The `wgpy` command: the wg half (show, set, setconf, ...) and the wg-quick half (up, down, save, strip)."""
