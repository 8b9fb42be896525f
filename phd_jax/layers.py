"""Building blocks of the OLMo2-style decoder: parameters with logical axes, RMSNorm, RoPE,
SwiGLU and the token embedding.

Every parameter carries logical axis names (`embed`, `mlp`, `q_heads`, `kv_heads`,
`head_dim`, `vocab`, `norm`; `layers` for the stacked blocks) as `out_sharding` metadata;
`phd_jax.sharding` maps them onto the mesh. Eager sharding is off so that a model can be
built without a mesh (tests, CPU) and sharded by `jit(..., out_shardings=...)` when there
is one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def constrain(x, axes: tuple[str | None, ...]):
  """Pin an activation's layout by logical axis names (e.g. `activation_batch`).

  Active only while tracing under a mesh (`jax.set_mesh`) and logical rules
  (`nnx.logical_axis_rules`), as `phd_jax.sharding` sets them; a name without a rule is an
  error, as in `sharding.logical_to_spec` (None replicates). Elsewhere (tests, one device)
  it returns `x` unchanged.
  """
  rules = dict(spmd.get_logical_axis_rules() or ())
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return x
  unknown = [a for a in axes if a is not None and a not in rules]
  if unknown:
    raise ValueError(f"logical axes {unknown} have no rule in the active logical axis rules "
                     "(phd_jax.sharding.RULES)")
  return jax.lax.with_sharding_constraint(
      x, PartitionSpec(*(None if a is None else rules[a] for a in axes)))


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...],
          std: float | None) -> nnx.Param:
  """A float32 parameter: normal(0, std), or ones when std is None (norm scales)."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  else:
    value = std * jax.random.truncated_normal(rngs.params(), -3.0, 3.0, shape, jnp.float32)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm over the trailing `len(shape)` axes, computed in float32."""

  def __init__(self, shape: tuple[int, ...], axes: tuple[str, ...], eps: float, *,
               rngs: nnx.Rngs):
    self.scale = param(rngs, shape, axes, std=None)
    self.eps = eps

  def __call__(self, x):
    reduce_axes = tuple(range(-self.scale.ndim, 0))
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=reduce_axes, keepdims=True) + self.eps)
    scale = jax.lax.broadcast_to_rank(self.scale[...], x.ndim)
    return (x32 * inv_rms * scale).astype(x.dtype)


def rope(x_BTKHDh, positions_BTK, theta: float):
  """Rotary embedding (rotate-half convention) at integer positions, one per copy."""
  head_dim = x_BTKHDh.shape[-1]
  freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angle = jnp.multiply.outer(positions_BTK.astype(jnp.float32), freq)  # [B, T, K, Dh/2]
  angle = angle[..., None, :]  # the same for every head
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x_BTKHDh.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BTKHDh.dtype)


class SwiGLU(nnx.Module):
  """down(silu(x @ gate) * (x @ up)), no biases."""

  def __init__(self, d_model: int, mlp_dim: int, std: float, out_std: float, *,
               rngs: nnx.Rngs):
    self.gate = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), std)
    self.up = param(rngs, (d_model, mlp_dim), ("embed", "mlp"), std)
    self.down = param(rngs, (mlp_dim, d_model), ("mlp", "embed"), out_std)

  def __call__(self, x_BTKD):
    dtype = x_BTKD.dtype
    gate = x_BTKD @ self.gate[...].astype(dtype)
    up = x_BTKD @ self.up[...].astype(dtype)
    return (jax.nn.silu(gate) * up) @ self.down[...].astype(dtype)


class Embed(nnx.Module):
  """Token embedding; `unembed` gives float32 logits when the output layer is tied."""

  def __init__(self, vocab_size: int, d_model: int, std: float, *, rngs: nnx.Rngs):
    self.table = param(rngs, (vocab_size, d_model), ("vocab", "embed"), std)

  def __call__(self, tokens, dtype):
    # Gather the embed dim first (as FSDP does for every weight): looking up rows of an
    # embed-sharded table would leave the activations' gradient sharded on embed, and
    # resharding that back to the batch layout can cost a full all-gather.
    table = constrain(self.table[...], ("vocab", None))
    return jnp.take(table, tokens, axis=0).astype(dtype)

  def unembed(self, x):
    return jnp.einsum("...d,vd->...v", x, self.table[...].astype(x.dtype),
                      preferred_element_type=jnp.float32)
