"""The built-in toy: a seeded world of facts, a word-level chat tokenizer, a tiny base model, `longpo demo`."""

from longpo.demo import run
from longpo.demo.run import Config, main

__doc__ = run.__doc__  # `longpo demo --help` shows the stage's own description
__all__ = ["Config", "main"]
