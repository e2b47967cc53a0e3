"""Dataset Style Inversion (one pseudo-token for a dataset), per-class textual inversion, and style LoRAs (ours)."""
