"""lmsprint: pretrain language models against the clock, and know honestly which idea won."""

__version__ = "0.1.0"
