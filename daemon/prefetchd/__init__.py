"""prefetchd: verified, atomic, deduplicated local copies of the files agents need."""

__version__ = "0.1.0"
