"""The built-in toy: a seeded world of facts, a word-level chat tokenizer, and a tiny base model."""
