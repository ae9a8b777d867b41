"""Executors run the pipeline's steps on a machine (local) or a cluster (later: Ray)."""
