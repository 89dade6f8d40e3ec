"""LongPO: extend a chat model's context window with self-generated short-to-long preference data."""

__version__ = "0.1.0"
