"""Filtering synthetic images by a score (ours, beyond the paper; as in He et al. ICLR'23, DISEF, ALIA, SaSPA).

`synthtl filter <set>` scores the images of a generated set with zero-shot CLIP on the class names or with a classifier
fine-tuned on the real train split, and writes, for each volume asked for, an immutable kept list: the k best of the
first V images of each class, a fraction of them, or those above a threshold (`store`). Reading a kept list needs no
torch (`store.read_kept`); running a filter: `synthtl.filtering.run.run_filter`.
"""
