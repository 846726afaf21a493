"""Offline precompute: run Stable Diffusion step by step and record everything the explainer shows."""
