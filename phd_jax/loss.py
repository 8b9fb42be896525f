"""Next-token cross-entropy on the final copies."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_mask(segment_ids_BT):
  """Which positions t have a real target: token t+1 is in the same (non-padding) document.

  The last token of each document and of each row has no target; padding (segment 0) none.
  """
  same_doc = (segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]) & (segment_ids_BT[:, :-1] != 0)
  return jnp.pad(same_doc, ((0, 0), (0, 1)))


def next_token_loss(logits_BTV, tokens_BT, segment_ids_BT=None, z_loss: float = 0.0):
  """Mean cross-entropy over real targets and their count.

  Returns `(loss, num_targets)`; `loss` includes `z_loss * logsumexp^2` when z_loss > 0
  (PaLM/OLMo2's stabiliser). Logits are expected in float32.
  """
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones_like(tokens_BT)
  targets_BT = jnp.pad(tokens_BT[:, 1:], ((0, 0), (0, 1)))
  weights_BT = target_mask(segment_ids_BT).astype(jnp.float32)
  logits_BTV = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  per_token_BT = log_z_BT - target_logit_BT
  if z_loss:
    per_token_BT = per_token_BT + z_loss * jnp.square(log_z_BT)
  count = weights_BT.sum()
  return (per_token_BT * weights_BT).sum() / jnp.maximum(count, 1.0), count
