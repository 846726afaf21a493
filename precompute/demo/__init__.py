"""The demo model: a tiny Stable Diffusion trained from scratch on a procedural shapes world.

- world.py  renders scenes (flat shapes on flat backgrounds), their captions and masks.
- model.py  builds Stable Diffusion's parts at toy size and the caption tokenizer.
- train.py  trains the VAE, then the UNet + text encoder, and saves a pipeline folder.
- judge.py  reads a scene's attributes back from pixels, to measure prompt adherence.
"""
