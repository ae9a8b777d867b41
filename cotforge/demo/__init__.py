"""Synthetic datasets in the real MMSA layout (`cotforge demo-data`): a tool beside the pipeline, not a reader."""
