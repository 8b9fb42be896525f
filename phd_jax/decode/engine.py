"""Prefill, decoding steps and generation, run through the model's own blocks.

Every forward here is `Transformer.hidden_states_with` an injected attention function, so
projections, norms, RoPE, MLPs and the scan over layers are the training code; only where
keys come from differs. A forward runs the first C copies (1: originals only, or all K) of N tokens
placed in cache slots [start, start+N) and stores their K/V (`cache.write`).

Prefill (PAPER.md "Inference"), on left-padded prompts:
  PHD and Vanilla  originals of all but the last prompt token, then its K copies.
  PHD-SWA          all K copies of the last ceil(L*W/(K-1)) + 1 prompt tokens (L*W + 1
                   with window_unit="positions"): a window reaches W back per layer, so
                   earlier hidden copies cannot reach the cache or the next token
                   (`swa_hidden_tokens`; the paper computes every prompt token's).
  PHD-CSWA         originals up to the last token's chunk, then all K copies of that
                   (partial) chunk, or of SWA's tokens when fewer: windows never reach
                   into earlier chunks.
A decoding step is the K copies of one new token in one forward; copy 0's K/V join the
cache, copy K-1's logits choose the next token. PLT variants prefill and step in
phd_jax/decode/loops.py (all loops of the new token in one forward), behind the same
functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phd_jax import sharding
from phd_jax.decode import loops
from phd_jax.decode.cache import Cache, init_cache, moved, shard_cache
from phd_jax.decode.forward import forward
from phd_jax.decode.prompts import POWERS_OF_TWO, check_buckets, layout
from phd_jax.decode.sampling import Sampling, sample
from phd_jax.masks import PHDSpec, PLTSpec


def swa_hidden_tokens(spec: PHDSpec, num_layers: int) -> int:
  """How many trailing prompt tokens' hidden copies can reach the cache and the next token
  through an SWA window of `num_layers` layers: prefill computes only those.

  Originals never see hidden copies (rules R1, R2), so they are exact whatever hidden
  copies are computed. Number the hidden copies in hidden-stream order (copy a >= 1 of
  token p is h = p*(K-1) + a-1) and let h* be the final copy of the last token. What is
  needed: layer l's K/V of the last W window entries, for every l (the cache), and the last
  layer's output at h* (the next token). Layer l's output at h depends on layer l's K/V of
  D(h) = [min(h - W, first(h)), h], where first(h) starts h's own token (R2: its lower
  copies); layer 0's K/V are the embedding's. So if m_l is the earliest hidden copy whose
  layer-l K/V are needed, m_{L-1} = min(h* - W + 1, min D(h*)) and
  m_{l-1} = min(m_l - W, first(m_l)) (D's lower end grows with h). Hidden copies from
  m_0's token on are computed; those before it are left out, so the earliest computed
  copies see truncated windows, but their errors move forward by at most one window per
  layer and stay below m_l at layer l: nothing needed is touched.

  When W >= K-2 (first(h) >= h - W) this is m_0 = h* - L*W: 1 + ceil((L*W - K + 2)/(K-1))
  <= ceil(L*W/(K-1)) + 1 tokens. Smaller windows can need more than L*W/(K-1) tokens (a
  token's last copy reaches its first through R2), which the recursion counts.
  window_unit="positions" reaches every hidden copy of the W tokens before, so the same
  reasoning over tokens gives L*W + 1.
  """
  if spec.window_unit == "positions":
    return num_layers * spec.window + 1
  hidden = spec.k - 1  # hidden copies per token; the last token's copies are 0..hidden-1
  first = lambda h: h // hidden * hidden
  last = hidden - 1
  earliest = min(last - spec.window, first(last))  # the window entries lie after it
  for _ in range(num_layers - 1):
    earliest = min(earliest - spec.window, first(earliest))
  return 1 - earliest // hidden  # tokens from earliest's own through the last


def later_loop_tokens(spec: PLTSpec, num_layers: int) -> int:
  """How many trailing prompt tokens a PLT prefill runs the later loops on (loop 0 runs
  them all) so that the next token's logits and the state the decoding steps continue
  from (each loop's output at the last token, its window's K/V) are exact.

  Loop l's output at token t reads loop l's K/V of the W-1 tokens before t, every layer;
  so loop l run from token s is exact from s + L*(W-1) on (its first tokens' windows are
  cut, which spoils only the tokens before that), and its input at s reads loop l-1's
  output at s-1. The last loop must be exact at the last token, the loops before it where
  the next loop starts: loop l runs on the last (loops - l) * (1 + L*(W-1)) tokens, and
  running every later loop on loop 1's count, returned here, is as exact.
  """
  return (spec.loops - 1) * (1 + num_layers * max(spec.window - 1, 0))


def hidden_prefill_tokens(spec: PHDSpec | PLTSpec, lengths,
                          num_layers: int | None = None) -> int:
  """How many trailing slots of the left-padded prompts prefill runs with all K copies.

  PHD: the last token. CSWA: the last token's (partial) chunk, whose windows never reach
  an earlier one. SWA (and CSWA when it is shorter): `swa_hidden_tokens` of the model's
  `num_layers` (None: every prompt token, as the paper does). PLT: the tokens the later
  loops run on (`later_loop_tokens`; None: every prompt token).
  """
  lengths = [int(n) for n in lengths]
  if isinstance(spec, PLTSpec):
    needed = max(lengths)
    return needed if num_layers is None else min(needed, later_loop_tokens(spec, num_layers))
  if spec.window == 0:
    return 1
  needed = max(lengths)
  if num_layers is not None:
    needed = min(needed, swa_hidden_tokens(spec, num_layers))
  if spec.chunk is None:
    return needed
  return min(needed, max(n - (n - 1) // spec.chunk * spec.chunk for n in lengths))


def prefill(model, cache: Cache, tokens_BT, hidden_tokens: int):
  """Final-copy logits `[B, V]` of each prompt's last token, and the filled cache.

  `cache` (empty) needs room for the longest prompt only, not for its bucket: the
  forwards fill the T slots of `tokens_BT`, and the left padding every row shares is
  dropped as they move into `cache`'s slots.
  Up to three forwards: originals only, all copies of the other hidden-prefill tokens, and
  the last token. Only the last one's output is used, so XLA drops the last layer's
  attention output and MLP of every earlier token (only their K/V are needed).
  """
  if isinstance(model.spec, PLTSpec):
    return loops.prefill(model, cache, tokens_BT, hidden_tokens)
  T, k, cache_len = tokens_BT.shape[1], model.spec.k, cache.cache_len
  cache = moved(cache, T)
  split = T - hidden_tokens
  if split:
    _, cache = forward(model, cache, tokens_BT[:, :split], 0, copies=1)
  if split < T - 1:
    _, cache = forward(model, cache, tokens_BT[:, split:T - 1], split, copies=k)
  x_B1KD, cache = forward(model, cache, tokens_BT[:, T - 1:], T - 1, copies=k)
  return model.logits(x_B1KD[:, :, -1])[:, 0], moved(cache, cache_len, cache.first_slot.min())


def step(model, cache: Cache, tokens_B):
  """Feed one token per row: its final-copy logits `[B, V]` and the updated cache."""
  if isinstance(model.spec, PLTSpec):
    return loops.step(model, cache, tokens_B)
  x_B1KD, cache = forward(model, cache, tokens_B[:, None], cache.length, copies=model.spec.k)
  return model.logits(x_B1KD[:, :, -1])[:, 0], cache


def generate_tokens(model, cache, tokens_BT, hidden_tokens, max_new_tokens, sampling, eos_id,
                    key, done_B=None, place_cache=lambda cache: cache):
  """`[B, max_new_tokens]` tokens and how many were produced: all rows stop at EOS (rows
  `done_B` from the start); `place_cache` puts each step's cache on the devices."""
  if done_B is None:
    done_B = jnp.zeros(tokens_BT.shape[:1], bool)
  logits_BV, cache = prefill(model, cache, tokens_BT, hidden_tokens)
  token_B = sample(logits_BV, jax.random.fold_in(key, 0), sampling)
  out_BN = jnp.zeros((tokens_BT.shape[0], max_new_tokens), jnp.int32).at[:, 0].set(token_B)

  def unfinished(carry):
    i, _, _, _, done_B = carry
    return (i < max_new_tokens) & ~done_B.all()

  def next_token(carry):
    i, token_B, cache, out_BN, done_B = carry
    logits_BV, cache = step(model, cache, token_B)
    token_B = sample(logits_BV, jax.random.fold_in(key, i), sampling)
    return (i + 1, token_B, place_cache(cache), out_BN.at[:, i].set(token_B),
            done_B | (token_B == eos_id))

  carry = (jnp.int32(1), token_B, place_cache(cache), out_BN, done_B | (token_B == eos_id))
  count, _, _, out_BN, _ = jax.lax.while_loop(unfinished, next_token, carry)
  return out_BN, count


def _on_mesh(mesh, fn, *args):
  """`fn(*args)` traced with the logical sharding rules when there is a mesh."""
  if mesh is None:
    return fn(*args)
  with nnx.logical_axis_rules(sharding.RULES):
    return fn(*args)


def _prefilled(model, mesh, first_slot_B, cache_len, hidden_tokens, tokens_BT):
  cache = init_cache(model.cfg, model.spec, tokens_BT.shape[0], cache_len, first_slot_B)
  logits_BV, cache = prefill(model, shard_cache(cache, mesh), tokens_BT, hidden_tokens)
  return logits_BV, shard_cache(cache, mesh)


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5))
def _prefill_jit(graphdef, state, mesh, first_slot_B, cache_len, hidden_tokens, tokens_BT):
  return _on_mesh(mesh, _prefilled, nnx.merge(graphdef, state), mesh, first_slot_B,
                  cache_len, hidden_tokens, tokens_BT)


@functools.partial(jax.jit, static_argnums=(0, 2), donate_argnums=3)
def _step_jit(graphdef, state, mesh, cache, tokens_B):
  def run(model, cache, tokens_B):
    logits_BV, cache = step(model, cache, tokens_B)
    return logits_BV, shard_cache(cache, mesh)
  return _on_mesh(mesh, run, nnx.merge(graphdef, state), cache, tokens_B)


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5, 7, 8))
def _generate_jit(graphdef, state, mesh, first_slot_B, cache_len, hidden_tokens, tokens_BT,
                  max_new_tokens, sampling, eos_id, seed, done_B):
  def run(model):
    cache = shard_cache(init_cache(model.cfg, model.spec, tokens_BT.shape[0], cache_len,
                                   first_slot_B), mesh)
    return generate_tokens(model, cache, tokens_BT, hidden_tokens, max_new_tokens,
                           sampling, eos_id, jax.random.key(seed), done_B,
                           functools.partial(shard_cache, mesh=mesh))
  return _on_mesh(mesh, run, nnx.merge(graphdef, state))


def params_mesh(state):
  """The mesh the parameters are laid out on, or None (one device, or not NamedSharding)."""
  leaf = jax.tree.leaves(state)[0]
  named = getattr(leaf, "sharding", None)
  if isinstance(named, NamedSharding) and named.mesh.size > 1:
    return named.mesh
  return None


class Decoder:
  """Jitted prefill, decoding steps and generation for one model, on one device or a mesh.

  mesh: the ("data", "fsdp", "tensor") mesh to decode on (default: the one the model's
  parameters lie on, as `state.load_model` places them; one device if none). Rows go
  over data and fsdp (filled up to a multiple of their devices with one-token prompts),
  heads, key/value caches and the vocabulary over tensor, as in training.
  prompt_buckets: lengths prompts are left-padded to (`prompts.POWERS_OF_TWO` by default;
  None: every length its own program). With buckets, the hidden-copy prefill also runs on
  a fixed number of trailing tokens (the most any prompt of the bucket needs), so the
  bucket alone decides the program; its padding takes no cache slots (`prefill`).
  Compiled code is shared by every Decoder of the same model structure and mesh.
  """

  def __init__(self, model, *, mesh: Mesh | None = None, prompt_buckets=POWERS_OF_TWO):
    self.graphdef, self.state = nnx.split(model)
    self.cfg, self.spec = model.cfg, model.spec
    self.mesh = params_mesh(self.state) if mesh is None else mesh
    if self.mesh is not None and params_mesh(self.state) != self.mesh:
      self.state = jax.device_put(self.state, sharding.tree_shardings(self.state, self.mesh))
    self.buckets = check_buckets(prompt_buckets)

  def _rows(self):
    return 1 if self.mesh is None else sharding.data_parallel_size(self.mesh)

  def layout(self, prompts, max_new_tokens: int = 1, cache_len=None):
    """(`prompts.Layout`, how many trailing slots prefill runs with all K copies)."""
    laid = layout(prompts, self.cfg.vocab_size, max_new_tokens, cache_len, self.buckets,
                  self._rows())
    T = laid.tokens_BT.shape[1]
    lengths = laid.lengths
    if self.buckets:  # one program per bucket: serve any length it holds (every chunk residue)
      chunk = self.spec.chunk if isinstance(self.spec, PHDSpec) else None
      lengths = range(max(1, T - (chunk or 1) + 1), T + 1)
    return laid, min(T, hidden_prefill_tokens(self.spec, lengths, self.cfg.num_layers))

  def _put(self, *arrays):
    """Arrays on the mesh, rows over the data-parallel axes."""
    if self.mesh is None:
      return arrays
    rows = lambda x: NamedSharding(self.mesh, PartitionSpec(sharding.BATCH_AXES,
                                                            *[None] * (x.ndim - 1)))
    return tuple(jax.device_put(x, rows(x)) for x in arrays)

  def _call(self, fn, *args):
    if self.mesh is None:
      return fn(*args)
    with jax.set_mesh(self.mesh):
      return fn(*args)

  def prefill(self, prompts, cache_len=None, max_new_tokens: int = 1):
    """Final-copy logits `[B, V]` of each prompt's last token, and the cache after it
    (rows past the prompts' only fill the mesh's batch). `max_new_tokens`: the tokens to
    come (their first from these logits). `cache_len` (default: the bucket's length +
    max_new_tokens - 1) must hold the longest prompt + max_new_tokens - 1 slots: bucket
    padding takes none, so a 9-token prompt and 11 steps fit in 20."""
    laid, hidden_tokens = self.layout(prompts, max_new_tokens, cache_len)
    first_slot_B, tokens_BT = self._put(laid.first_slot_B, laid.tokens_BT)
    return self._call(_prefill_jit, self.graphdef, self.state, self.mesh, first_slot_B,
                      laid.cache_len, hidden_tokens, tokens_BT)

  def step(self, cache: Cache, tokens_B):
    """Feed one token per row; the cache passed in is consumed (donated)."""
    tokens_B = np.asarray(tokens_B, np.int32)
    if tokens_B.shape != cache.first_slot.shape:
      raise ValueError(f"tokens must have shape {cache.first_slot.shape} (one per row of the "
                       f"cache); got {tokens_B.shape}")
    if int(cache.length) >= cache.cache_len:  # writes past the end would be clamped silently
      raise ValueError(f"the cache is full: all cache_len={cache.cache_len} slots are used")
    return self._call(_step_jit, self.graphdef, self.state, self.mesh, cache,
                      *self._put(tokens_B))

  def generate(self, prompts, max_new_tokens, *, temperature=0.0, top_k=0, top_p=1.0,
               seed=0, eos_id=None, cache_len=None) -> list[list[int]]:
    sampling = Sampling(temperature, top_k, top_p)
    if eos_id is not None and not (isinstance(eos_id, (int, np.integer))
                                   and 0 <= eos_id < self.cfg.vocab_size):
      raise ValueError(f"eos_id must be None or a token id in [0, {self.cfg.vocab_size}); "
                       f"got {eos_id!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f"seed must be an integer; got {seed!r}")
    laid, hidden_tokens = self.layout(prompts, max_new_tokens, cache_len)
    done_B = np.arange(len(laid.lengths)) >= laid.rows  # filler rows never hold generation up
    first_slot_B, tokens_BT, done_B = self._put(laid.first_slot_B, laid.tokens_BT, done_B)
    out_BN, count = self._call(
        _generate_jit, self.graphdef, self.state, self.mesh, first_slot_B, laid.cache_len,
        hidden_tokens, tokens_BT, max_new_tokens, sampling,
        -1 if eos_id is None else int(eos_id), seed, done_B)
    rows = np.asarray(out_BN)[:laid.rows, :int(count)].tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


def generate(model, prompts, max_new_tokens, *, temperature=0.0, top_k=0, top_p=1.0, seed=0,
             eos_id=None, cache_len=None, mesh=None,
             prompt_buckets=POWERS_OF_TWO) -> list[list[int]]:
  """Continuations of `prompts` (lists of token ids), each without the EOS that ended it.

  temperature 0 is greedy; otherwise top_k / top_p sampling from a PRNG seeded by `seed`.
  Generation stops after `max_new_tokens` or when every row has produced `eos_id`.
  mesh, prompt_buckets: as for `Decoder`.
  """
  return Decoder(model, mesh=mesh, prompt_buckets=prompt_buckets).generate(
      prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
      eos_id=eos_id, cache_len=cache_len)
