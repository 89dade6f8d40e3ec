"""The built-in toy: a seeded world of facts, a word-level chat tokenizer, a tiny base model, `longpo demo`."""

from longpo.demo.run import Config, main

__all__ = ["Config", "main"]
