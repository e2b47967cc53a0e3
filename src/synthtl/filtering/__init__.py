"""Filtering synthetic images by a score (ours, beyond the paper; as in He et al. ICLR'23, DISEF, ALIA, SaSPA): CLIP or
a real-only classifier (`scorers`) scores a set; kept lists per volume (`store`): top k, a fraction or a threshold."""
