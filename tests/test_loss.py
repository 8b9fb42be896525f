"""Next-token loss on the final copies against a per-position loop."""

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.loss import next_token_loss


def test_loss_matches_loop_with_padding_and_documents():
  rng = np.random.default_rng(0)
  B, T, V = 2, 9, 13
  logits = rng.normal(size=(B, T, V)).astype(np.float32)
  toks = rng.integers(0, V, size=(B, T))
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
  z = 1e-3
  total, count = 0.0, 0
  for b in range(B):
    for t in range(T - 1):
      if seg[b, t] == 0 or seg[b, t + 1] != seg[b, t]:
        continue  # padding, or the last token of a document: no target
      lse = np.log(np.exp(logits[b, t].astype(np.float64)).sum())
      total += lse - logits[b, t, toks[b, t + 1]] + z * lse**2
      count += 1
  loss, n = next_token_loss(jnp.asarray(logits), jnp.asarray(toks), jnp.asarray(seg), z_loss=z)
  assert int(n) == count == 5 + 8
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_default_segments_use_every_position_but_the_last():
  logits = jax.random.normal(jax.random.key(0), (1, 4, 7))
  toks = jnp.array([[1, 2, 3, 4]])
  loss, n = next_token_loss(logits, toks)
  expected = -np.mean([jax.nn.log_softmax(logits[0, t])[toks[0, t + 1]] for t in range(3)])
  assert int(n) == 3
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
