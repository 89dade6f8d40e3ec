"""RULER, InfiniteBench and short-context evaluation."""
