"""lumi_jax: train tiny LLaMA-style language models from scratch with JAX/Flax."""

__version__ = "0.1.0"
