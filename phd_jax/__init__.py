"""phd_jax: PHD-Transformer (Parallel Hidden Decoding) pretraining in JAX."""

__version__ = "0.1.0"
