"""`cotforge demo-data`: synthetic datasets in the real MMSA layout (no download, no licence needed).

`labels` makes the label-file rows (ids, labels, splits, transcripts), `media` and `voice` the MP4
clips, `writer` lays them out on disk (label file, `Raw/`, full videos, corruption, `demo.json`).
"""

from cotforge.demo.writer import CORRUPT_KINDS, DemoClip, DemoDataset, make_demo_dataset

__all__ = ["CORRUPT_KINDS", "DemoClip", "DemoDataset", "make_demo_dataset"]
