"""The attention rules of every variant (PHD and its sibling PLT), variant names and the
explicit reference masks.

Layout: the K copies of each token sit next to each other ("interleaved"): row/column
``p * k + a`` is copy ``a`` of token ``p`` (copy 0 is the original token, copies 1..k-1
are the hidden decoding tokens). Rows are queries; ``True`` means "may attend".

Rules (PAPER.md, 0-based copies here):
  R1  key copy 0 of an earlier token (q < p): every copy sees the originals before it.
  R2  same token (q == p) and key copy <= query copy: causal among the copies.
  SWA hidden queries also see the ``window`` hidden tokens before them in the hidden
      stream (``window_unit="tokens"``), or every hidden copy of the ``window`` tokens
      before them (``window_unit="positions"``).
  CSWA the SWA window does not reach into an earlier chunk; chunks are counted over
      in-document ``positions``, so packing does not move chunk boundaries.
  Nothing is visible across different ``segment_ids`` (packed documents).

PLT (Parallel Loop Transformer, arXiv 2510.24824; the model: phd_jax/plt.py) runs the
same blocks `loops` times. Rows and columns of its explicit mask are loop-major: row
``l * T + p`` is token ``p`` in loop ``l``. Each query has two softmaxes, mixed per head by
a learned gate (phd_jax/attention/loops.py):
  global  keys of loop 0 at tokens q <= p (loop 0's own, vanilla causal attention, is this
          part alone; a later loop's query sees loop 0's key of its own token too).
  local   loops >= 1 only: keys of the query's own loop at tokens p - W < q <= p, W =
          `window` tokens counting the query's own (none when W = 0).
  Nothing across documents.

This module imports nothing else of the project: every other layer builds on it.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_UNITS = ("tokens", "positions")
POSITION_MODES = ("shared", "expanded")
GATE_INPUTS = ("query", "hidden")  # what a PLT gate reads (PLTSpec.gate)


@dataclasses.dataclass(frozen=True)
class PHDSpec:
  """Settings of one PHD variant.

  k: copies per token (1 = vanilla). window: SWA window over hidden tokens (0 = none).
  chunk: CSWA chunk length in tokens (None = no chunks). window_unit: "tokens" counts
  hidden tokens in the hidden stream, "positions" counts preceding tokens. positions:
  RoPE position of copy a of token p: "shared" = pos(p), "expanded" = k*pos(p) + a.
  """

  k: int = 1
  window: int = 0
  chunk: int | None = None
  window_unit: str = "tokens"
  positions: str = "shared"

  def __post_init__(self):
    _check_int("k", self.k, minimum=1)
    _check_int("window", self.window, minimum=0)
    if self.chunk is not None:
      _check_int("chunk", self.chunk, minimum=1)
      if self.window == 0:
        raise ValueError(f"chunk={self.chunk} needs a sliding window (window > 0); got window=0")
    if self.window > 0 and self.k == 1:
      raise ValueError(f"window={self.window} needs hidden copies (k > 1); got k=1")
    if self.window_unit not in WINDOW_UNITS:
      raise ValueError(f"window_unit must be one of {WINDOW_UNITS}; got {self.window_unit!r}")
    if self.positions not in POSITION_MODES:
      raise ValueError(f"positions must be one of {POSITION_MODES}; got {self.positions!r}")

  @property
  def name(self) -> str:
    return variant_name(self)


@dataclasses.dataclass(frozen=True)
class PLTSpec:
  """Settings of one PLT variant (the rules in the module docstring; phd_jax/plt.py).

  loops: runs of every token through the shared blocks (1 = vanilla). window: W of the
  local attention of loops >= 1, in tokens, the query's own included (0 = none: later
  loops attend to loop 0's keys alone, with no gate). gate: what the per-head gate mixing
  the two parts reads: "query" (the post-RoPE query) or "hidden" (the block's input, normed).
  emb_scale, hidden_scale: a and b of loop l's input a*E(t) + b*H_{l-1}(t-1).
  norm_per_loop: H is a loop's output after the (shared) final norm.
  """

  loops: int = 2
  window: int = 0
  gate: str = "query"
  emb_scale: float = 1.0
  hidden_scale: float = 1.0
  norm_per_loop: bool = True

  def __post_init__(self):
    _check_int("loops", self.loops, minimum=1)
    _check_int("window", self.window, minimum=0)
    if self.window > 0 and self.loops == 1:
      raise ValueError(f"window={self.window} needs later loops (loops > 1); got loops=1")
    if self.gate not in GATE_INPUTS:
      raise ValueError(f"gate must be one of {GATE_INPUTS}; got {self.gate!r}")
    for field in ("emb_scale", "hidden_scale"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number; got {value!r}")
    if not isinstance(self.norm_per_loop, bool):
      raise ValueError(f"norm_per_loop must be True or False; got {self.norm_per_loop!r}")

  @property
  def k(self) -> int:
    """Runs of each token through the blocks: the compute multiplier, as PHD's K."""
    return self.loops

  @property
  def gated(self) -> bool:
    """Whether later loops have a local part, hence a gate (and its parameters)."""
    return self.loops > 1 and self.window > 0

  @property
  def name(self) -> str:
    return variant_name(self)


def _check_int(field: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{field} must be an integer; got {value!r}")
  if value < minimum:
    raise ValueError(f"{field} must be >= {minimum}; got {value}")


def variant_name(spec: PHDSpec | PLTSpec) -> str:
  """`Vanilla`, `PHD-K`, `PHD-SWA-K-W-∞` or `PHD-CSWA-K-W-C` (the paper's names); `PLT-L`
  (loops, no window) or `PLT-L-W`."""
  if isinstance(spec, PLTSpec):
    return f"PLT-{spec.loops}" + (f"-{spec.window}" if spec.window else "")
  if spec.k == 1:
    return "Vanilla"
  if spec.window == 0:
    return f"PHD-{spec.k}"
  if spec.chunk is None:
    return f"PHD-SWA-{spec.k}-{spec.window}-∞"
  return f"PHD-CSWA-{spec.k}-{spec.window}-{spec.chunk}"


_NAME_PATTERNS = (  # (pattern, settings class, its fields from the match)
    (re.compile(r"vanilla", re.I), PHDSpec, lambda m: dict(k=1)),
    (re.compile(r"phd-(\d+)", re.I), PHDSpec, lambda m: dict(k=int(m[1]))),
    (re.compile(r"phd-swa-(\d+)-(\d+)(?:-(∞|inf))?", re.I), PHDSpec,
     lambda m: dict(k=int(m[1]), window=int(m[2]))),
    (re.compile(r"phd-cswa-(\d+)-(\d+)-(\d+)", re.I), PHDSpec,
     lambda m: dict(k=int(m[1]), window=int(m[2]), chunk=int(m[3]))),
    (re.compile(r"plt-(\d+)(?:-(\d+))?", re.I), PLTSpec,
     lambda m: dict(loops=int(m[1]), window=int(m[2] or 0))),
)


def parse_variant(name: str, **kwargs) -> PHDSpec | PLTSpec:
  """Settings from a variant name; `kwargs` set the other fields of its settings class:
  window_unit and positions (PHD), gate, emb_scale, hidden_scale, norm_per_loop (PLT)."""
  for pattern, spec_class, fields in _NAME_PATTERNS:
    match = pattern.fullmatch(name.strip())
    if match:
      return spec_class(**fields(match), **kwargs)
  raise ValueError(
      f"variant {name!r} is not a variant name; expected one of 'Vanilla', 'PHD-K', "
      "'PHD-SWA-K-W-∞' (or -inf), 'PHD-CSWA-K-W-C', 'PLT-L', 'PLT-L-W', e.g. "
      "'PHD-CSWA-3-16-32' or 'PLT-2-64'")


def _array_module(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _broadcast(xp, *arrays):
  """`arrays` broadcast to one shape explicitly (jax.numpy may be set to refuse implicit
  rank promotion); None stays None."""
  given = iter(xp.broadcast_arrays(*(a for a in arrays if a is not None)))
  return [None if a is None else next(given) for a in arrays]


def visible(spec: PHDSpec, q_pos, q_copy, k_pos, k_copy, q_chunk_pos=None, k_chunk_pos=None):
  """Whether copy `q_copy` of the token at `q_pos` may attend to copy `k_copy` at `k_pos`.

  The rules of the module docstring, for arrays that broadcast against each other
  (numpy or jax). `*_pos` order the tokens within one document; chunks are taken from
  `*_chunk_pos` (in-document positions), which default to `*_pos`. Segments are the
  caller's business. `phd_mask`, the structured hidden band and cached decoding all
  evaluate exactly this rule.
  """
  xp = _array_module(q_pos, q_copy, k_pos, k_copy, q_chunk_pos, k_chunk_pos)
  q_pos, q_copy, k_pos, k_copy, q_chunk_pos, k_chunk_pos = _broadcast(
      xp, q_pos, q_copy, k_pos, k_copy, q_chunk_pos, k_chunk_pos)
  allowed = ((k_copy == 0) & (k_pos < q_pos)) | ((k_pos == q_pos) & (k_copy <= q_copy))
  if spec.window:
    if spec.window_unit == "tokens":  # distance in the hidden stream
      dist = (q_pos - k_pos) * (spec.k - 1) + (q_copy - k_copy)
    else:  # whole earlier tokens; the same token is R2's
      dist = q_pos - k_pos
    in_window = (q_copy > 0) & (k_copy > 0) & (k_pos < q_pos) & (dist > 0) & (dist <= spec.window)
    if spec.chunk is not None:
      q_chunk_pos = q_pos if q_chunk_pos is None else q_chunk_pos
      k_chunk_pos = k_pos if k_chunk_pos is None else k_chunk_pos
      in_window = in_window & (q_chunk_pos // spec.chunk == k_chunk_pos // spec.chunk)
    allowed = allowed | in_window
  return allowed


def phd_mask(num_tokens: int, k: int, window: int = 0, chunk: int | None = None,
             window_unit: str = "tokens", segment_ids=None, positions=None):
  """Boolean mask `[..., k*T, k*T]` over the interleaved copies (see module docstring).

  segment_ids, positions: `[T]` or `[B, T]` (numpy or jax, traced is fine). Positions
  default to 0..T-1 and only matter for CSWA chunks. Returns numpy for numpy inputs.
  """
  spec = PHDSpec(k=k, window=window, chunk=chunk, window_unit=window_unit)  # validates
  xp = _array_module(segment_ids, positions)
  idx = xp.arange(num_tokens * k)
  tok, copy = idx // k, idx % k  # token and copy of each row/column
  chunk_pos = None if positions is None else xp.repeat(positions, k, axis=-1)
  allowed = visible(spec, tok[:, None], copy[:, None], tok[None, :], copy[None, :],
                    None if chunk_pos is None else chunk_pos[..., :, None],
                    None if chunk_pos is None else chunk_pos[..., None, :])
  if segment_ids is not None:
    seg = xp.repeat(segment_ids, k, axis=-1)
    allowed, same_segment = _broadcast(xp, allowed, seg[..., :, None] == seg[..., None, :])
    allowed = allowed & same_segment
  return allowed


def spec_mask(spec: PHDSpec, num_tokens: int, segment_ids=None, positions=None):
  """`phd_mask` for a `PHDSpec`."""
  return phd_mask(num_tokens, spec.k, spec.window, spec.chunk, spec.window_unit,
                  segment_ids=segment_ids, positions=positions)


def plt_visible(spec: PLTSpec, q_pos, q_loop, k_pos, k_loop):
  """(global, local): whether the query of loop `q_loop` at token `q_pos` sees the key of
  loop `k_loop` at `k_pos` in its global softmax and in its local one (module docstring),
  for arrays that broadcast against each other (numpy or jax); arguments in the order of
  `visible`, a loop where it has a copy. Documents are the caller's business."""
  xp = _array_module(q_pos, q_loop, k_pos, k_loop)
  q_pos, q_loop, k_pos, k_loop = _broadcast(xp, q_pos, q_loop, k_pos, k_loop)
  causal = k_pos <= q_pos
  in_window = (q_loop > 0) & (k_loop == q_loop) & (q_pos - k_pos < spec.window)
  return causal & (k_loop == 0), causal & in_window


def plt_mask(spec: PLTSpec, num_tokens: int, segment_ids=None):
  """(global, local) boolean masks `[..., loops*T, loops*T]` over the loop-major rows.

  segment_ids: `[T]` or `[B, T]` (numpy or jax, traced is fine). Returns numpy for numpy
  inputs. A later loop's two `[T, T]` masks are the blocks of its rows in the columns of
  loop 0 (global) and of its own loop (local).
  """
  xp = _array_module(segment_ids)
  idx = xp.arange(num_tokens * spec.loops)
  loop, tok = idx // num_tokens, idx % num_tokens
  parts = plt_visible(spec, tok[:, None], loop[:, None], tok[None, :], loop[None, :])
  if segment_ids is None:
    return parts
  seg = xp.tile(segment_ids, (1,) * (segment_ids.ndim - 1) + (spec.loops,))
  same = seg[..., :, None] == seg[..., None, :]
  return tuple(a & b for a, b in (_broadcast(xp, part, same) for part in parts))


# What a cell of the picture shows, and its colour.
CELL_KINDS = (("not visible", "#f4f4f4"), ("original", "#1f4e99"),
              ("hidden copy of the same token", "#f08c2a"),
              ("hidden token in the window", "#2ca02c"),
              ("window cut by a chunk boundary", "#c7e9c0"))
CHUNK_BOUNDARY = "#d62728"  # colour of the dashed lines where a CSWA chunk starts


def cell_kinds(spec: PHDSpec, num_tokens: int) -> np.ndarray:
  """`[k*T, k*T]` indices into CELL_KINDS: what `draw` colours each (query, key) cell."""
  k = spec.k
  mask = np.asarray(spec_mask(spec, num_tokens))
  unchunked = np.asarray(spec_mask(dataclasses.replace(spec, chunk=None), num_tokens))
  tok = np.arange(k * num_tokens) // k
  hidden_key = (np.arange(k * num_tokens) % k > 0)[None, :]
  earlier_key = tok[None, :] < tok[:, None]
  kinds = np.where(mask, 1, 0)
  kinds = np.where(mask & hidden_key, np.where(earlier_key, 3, 2), kinds)
  return np.where(unchunked & ~mask, 4, kinds)


# ... and of a PLT picture.
PLT_CELL_KINDS = (("not visible", "#f4f4f4"), ("loop 0: causal", "#1f4e99"),
                  ("later loop, global: loop 0's keys", "#8c6bb1"),
                  ("later loop, local: own loop's window", "#2ca02c"))


def plt_cell_kinds(spec: PLTSpec, num_tokens: int) -> np.ndarray:
  """`[loops*T, loops*T]` indices into PLT_CELL_KINDS: what `draw` colours each cell."""
  global_mask, local_mask = plt_mask(spec, num_tokens)
  loop0_query = (np.arange(spec.loops * num_tokens) < num_tokens)[:, None]
  return np.where(local_mask, 3, np.where(global_mask, np.where(loop0_query, 1, 2), 0))


def _picture(spec, T: int):
  """What `draw` shows: (cell kinds, their (label, colour) table, (first, size) of the
  diagonal blocks outlined, tick labels, chunk starts (row index), title)."""
  if isinstance(spec, PLTSpec):
    labels = [f"x{t % T + 1}" + (f" L{t // T}" if t >= T else "") for t in range(spec.loops * T)]
    local = (f"window W={spec.window} (own token incl.), gated per head" if spec.window
             else "no local part")
    title = (f"{spec.name}: {spec.loops} loops, {T} tokens\n{local}\n"
             "loop l >= 1 reads a E(t) + b H_l-1(t-1)")
    blocks = [(loop * T, T) for loop in range(spec.loops)]
    return plt_cell_kinds(spec, T), PLT_CELL_KINDS, blocks, labels, [], title
  k = spec.k
  labels = [f"x{t // k + 1}" + "'" * (t % k) for t in range(k * T)]
  chunk_starts = [p * k for p in range(spec.chunk or T, T, spec.chunk or T)]
  window = f", window W={spec.window} ({spec.window_unit})" if spec.window else ""
  return (cell_kinds(spec, T), CELL_KINDS, [(p * k, k) for p in range(T)], labels,
          chunk_starts, f"{spec.name}{window}, {T} tokens")


def draw(spec: PHDSpec | PLTSpec, num_tokens: int, out: str) -> None:
  """Save a picture of the mask. PHD: originals, hidden copies of the same token, hidden
  tokens reached through the window and (CSWA) the window cut by a chunk boundary in their
  own colours; each token's block of copies outlined, chunk boundaries dashed. PLT: loop
  0's causal cells, a later loop's global and local cells; each loop's block outlined."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch, Rectangle

  kinds, table, blocks, labels, chunk_starts, title = _picture(spec, num_tokens)
  size = max(4.0, min(12.0, 0.3 * len(labels)))
  fig, ax = plt.subplots(figsize=(size, size + 1))
  colours = [colour for _, colour in table]
  ax.imshow(kinds, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1)
  for first, width in blocks:
    ax.add_patch(Rectangle((first - 0.5, first - 0.5), width, width, fill=False, lw=1.2,
                           ec="black"))
  for row in chunk_starts:
    for line in (ax.axhline, ax.axvline):
      line(row - 0.5, color=CHUNK_BOUNDARY, lw=2, ls="--")
  ticks = np.arange(len(labels))
  ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
  ax.set_yticks(ticks, labels, fontsize=7)
  ax.set_xlabel("key")
  ax.set_ylabel("query")
  shown = sorted(set(np.unique(kinds)) - {0})
  legend = [Patch(color=table[i][1], label=table[i][0]) for i in shown]
  if chunk_starts:
    legend.append(plt.Line2D([], [], color=CHUNK_BOUNDARY, lw=2, ls="--",
                             label=f"chunk boundary (every {spec.chunk} tokens)"))
  ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
            fontsize=8, frameon=False)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description="Draw a PHD or PLT attention mask.")
  parser.add_argument("variant", help="e.g. Vanilla, PHD-3, PHD-SWA-2-4-inf, PHD-CSWA-3-4-4, "
                      "PLT-2-4")
  parser.add_argument("--tokens", type=int, default=8)
  parser.add_argument("--window_unit", default="tokens", choices=WINDOW_UNITS,
                      help="PHD's window unit (PLT windows count tokens)")
  parser.add_argument("--out", default="mask.png")
  args = parser.parse_args(argv)
  spec = parse_variant(args.variant)
  if isinstance(spec, PHDSpec):
    spec = dataclasses.replace(spec, window_unit=args.window_unit)
  draw(spec, args.tokens, args.out)
  print(f"wrote {args.out}: {spec.name}, {args.tokens} tokens, {math.prod((spec.k * args.tokens,) * 2)} cells")


if __name__ == "__main__":
  main()
