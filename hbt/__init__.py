"""hbt: multilingual and cross-lingual dense retrieval with hybrid batch training."""

__version__ = "0.1.0"
