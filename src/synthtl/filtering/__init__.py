"""Filtering synthetic images by a score (ours, beyond the paper; as in He et al. ICLR'23, DISEF, ALIA, SaSPA):
`synthtl filter <set>` (`run.run_filter`) scores a generated set's images with zero-shot CLIP on the class names or a
classifier fine-tuned on the real train split (`scorers`), and writes an immutable kept list per volume (`store`;
reading one needs no torch): the k best of the first V images of each class, a fraction, or those above a threshold.
"""
