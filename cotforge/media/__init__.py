"""Decoding ClipRefs into Bundles (PyAV): one pass per clip, worker processes, bounded in-flight work."""
