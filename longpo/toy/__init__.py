"""The toy world in one place: tiny models and tokenizers built locally, the seeded fact world of the
demo, synthetic preference records, and the tiny training run's preparation. Nothing is downloaded."""
