"""Synthetic image generation with Stable Diffusion: prompts, pipelines, manifest-first sharded generation."""
