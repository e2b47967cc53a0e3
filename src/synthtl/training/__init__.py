"""Fine-tuning: a plain loop, optimizers, checkpoints and the data-utilisation strategies."""
