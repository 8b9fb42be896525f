"""Evaluation: the paper's zero-shot tasks, a batched log-likelihood scorer, held-out loss,
reports, and an lm-evaluation-harness model. `phd_jax.evaluate` is the command line."""
