"""Choosing the next token from final-copy logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature 0 = greedy; top_k 0 = no limit; top_p 1 = no nucleus cut."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
        or not self.temperature >= 0:
      raise ValueError(f"temperature must be a number >= 0; got {self.temperature!r}")
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) \
        or self.top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0; got {self.top_k!r}")
    if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) \
        or not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must lie in (0, 1]; got {self.top_p!r}")


def sample(logits_BV, key, sampling: Sampling):
  """Next token of every row `[B]` int32.

  Greedy (argmax) at temperature 0. Otherwise a draw from softmax(logits / temperature)
  restricted to the `top_k` most likely tokens, then to the smallest set of most likely
  tokens whose probability reaches `top_p` (ties at either cut are kept).
  """
  if sampling.temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k and sampling.top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if sampling.top_p < 1:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # of strictly likelier tokens
    kept_BV = jnp.where(mass_before_BV < sampling.top_p, sorted_BV, jnp.inf)
    logits_BV = jnp.where(logits_BV < kept_BV.min(axis=-1, keepdims=True), -jnp.inf,
                          logits_BV)
  return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)
