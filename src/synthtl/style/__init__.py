"""Dataset Style Inversion (one pseudo-token for a dataset) and per-class textual inversion."""
