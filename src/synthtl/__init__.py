"""synthtl: can synthetic images make a fine-tuned classifier better, and how should they be used?

Implements Li et al., "Is Synthetic Image Useful for Transfer Learning?" (arXiv 2403.19866) end to end:
generation with Stable Diffusion, dataset style inversion, bridged transfer, studies and reports.
"""

__version__ = "0.1.0"
