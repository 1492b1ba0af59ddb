"""fdl: measure feature learning from training checkpoints (arXiv 2410.04264)."""

__version__ = "0.1.0"
