"""The built-in toy: a seeded world of facts, a word-level chat tokenizer, a tiny base model, `longpo demo`.

The stage is `longpo.demo.run` (its config: `longpo.demo.config`); this package imports nothing, so the
config is read without torch."""
