"""Evaluation of models in memory and of checkpoints.

Library: `tasks` (the paper's seven zero-shot tasks: format, requests, accuracy), `scorer`
(batched, sharded log-likelihoods) over `batching` (fixed-shape scoring batches),
`heldout` (validation loss, perplexity, bits per byte), `suite` (all of these for one
model; the training loop's in-loop metrics), `report` (JSON and the markdown table).

Command lines: `python -m phd_jax.evaluate` (one checkpoint, or a run's newest),
`python -m phd_jax.eval.fetch` (the task files from their public releases),
`python -m phd_jax.eval.chase` (answer accuracy of pointer-chasing runs) and
`python -m phd_jax.eval.harness` (lm-evaluation-harness with the `phd_jax` model).
"""
