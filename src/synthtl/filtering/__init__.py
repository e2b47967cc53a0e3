"""Filtering synthetic images by a score (ours, beyond the paper; as in He et al. ICLR'23, DISEF, ALIA, SaSPA).

`synthtl filter <set>` scores every image of a finished generated set with zero-shot CLIP on the class names or with a
classifier fine-tuned on the real train split, and keeps the k best per class, a fraction per class, or those above a
threshold. Scores and decisions live beside the set in `<set>/filters/<name>/` (see `store`); the manifest is never
rewritten. Readers: `kept(set_dir, name)` (the manifest paths the filter kept over the whole set),
`selection(set_dir, name, per_class)` (what a run of that volume trains on: the rule applied to its first images of
each class, and a hash of it) and `identity(set_dir, name)` (a hash of the filter's config, model, set rows and kept
ids). Running a filter: `synthtl.filtering.run.run_filter` (imports torch).
"""

from synthtl.filtering.store import decisions, find_filters, identity, kept, read_filter, selection

__all__ = ["decisions", "find_filters", "identity", "kept", "read_filter", "selection"]
