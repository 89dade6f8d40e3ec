"""Long documents in -> short-to-long preference pairs out."""
