"""lmsprint: pretrain language models against the clock, and know honestly which idea won."""

from .version import __version__
