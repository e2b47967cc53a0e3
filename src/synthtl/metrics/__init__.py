"""Accuracy, LEEP transferability, image-set distances and leakage checks."""
