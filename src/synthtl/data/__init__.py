"""Real datasets, splits, the synthetic-set reader, the pre-resized image cache and transforms."""
