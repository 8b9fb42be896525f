"""The PHD attention rules, variant names and the explicit reference mask.

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


def _check_int(field: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{field} must be an integer; got {value!r}")
  if value < minimum:
    raise ValueError(f"{field} must be >= {minimum}; got {value}")


def variant_name(spec: PHDSpec) -> str:
  """`Vanilla`, `PHD-K`, `PHD-SWA-K-W-∞` or `PHD-CSWA-K-W-C` (the paper's names)."""
  if spec.k == 1:
    return "Vanilla"
  if spec.window == 0:
    return f"PHD-{spec.k}"
  if spec.chunk is None:
    return f"PHD-SWA-{spec.k}-{spec.window}-∞"
  return f"PHD-CSWA-{spec.k}-{spec.window}-{spec.chunk}"


_NAME_PATTERNS = (
    (re.compile(r"vanilla", re.I), lambda m: dict(k=1)),
    (re.compile(r"phd-(\d+)", re.I), lambda m: dict(k=int(m[1]))),
    (re.compile(r"phd-swa-(\d+)-(\d+)(?:-(∞|inf))?", re.I),
     lambda m: dict(k=int(m[1]), window=int(m[2]))),
    (re.compile(r"phd-cswa-(\d+)-(\d+)-(\d+)", re.I),
     lambda m: dict(k=int(m[1]), window=int(m[2]), chunk=int(m[3]))),
)


def parse_variant(name: str, **kwargs) -> PHDSpec:
  """Settings from a variant name; `kwargs` set window_unit and positions."""
  for pattern, fields in _NAME_PATTERNS:
    match = pattern.fullmatch(name.strip())
    if match:
      return PHDSpec(**fields(match), **kwargs)
  raise ValueError(
      f"variant {name!r} is not a PHD variant name; expected one of 'Vanilla', 'PHD-K', "
      "'PHD-SWA-K-W-∞' (or -inf), 'PHD-CSWA-K-W-C', e.g. 'PHD-CSWA-3-16-32'")


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


def draw(spec: PHDSpec, num_tokens: int, out: str) -> None:
  """Save a picture of the mask: originals, hidden copies of the same token, hidden tokens
  reached through the window and (CSWA) the window cut by a chunk boundary in their own
  colours; each token's block of copies outlined, chunk boundaries dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch, Rectangle

  k = spec.k
  kinds = cell_kinds(spec, num_tokens)
  size = max(4.0, min(12.0, 0.3 * k * num_tokens))
  fig, ax = plt.subplots(figsize=(size, size + 1))
  colours = [colour for _, colour in CELL_KINDS]
  ax.imshow(kinds, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1)
  for p in range(num_tokens):  # outline each token's block of copies
    ax.add_patch(Rectangle((p * k - 0.5, p * k - 0.5), k, k, fill=False, lw=1.2, ec="black"))
  for p in range(spec.chunk or num_tokens, num_tokens, spec.chunk or num_tokens):
    for line in (ax.axhline, ax.axvline):  # the chunk starting at token p
      line(p * k - 0.5, color=CHUNK_BOUNDARY, lw=2, ls="--")
  ticks = np.arange(k * num_tokens)
  labels = [f"x{t // k + 1}" + ("" if t % k == 0 else "'" * (t % k)) for t in ticks]
  ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
  ax.set_yticks(ticks, labels, fontsize=7)
  ax.set_xlabel("key")
  ax.set_ylabel("query")
  shown = sorted(set(np.unique(kinds)) - {0})
  legend = [Patch(color=CELL_KINDS[i][1], label=CELL_KINDS[i][0]) for i in shown]
  if spec.chunk is not None:
    legend.append(plt.Line2D([], [], color=CHUNK_BOUNDARY, lw=2, ls="--",
                             label=f"chunk boundary (every {spec.chunk} tokens)"))
  ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
            fontsize=8, frameon=False)
  window = f", window W={spec.window} ({spec.window_unit})" if spec.window else ""
  ax.set_title(f"{spec.name}{window}, {num_tokens} tokens")
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description="Draw a PHD attention mask.")
  parser.add_argument("variant", help="e.g. Vanilla, PHD-3, PHD-SWA-2-4-inf, PHD-CSWA-3-4-4")
  parser.add_argument("--tokens", type=int, default=8)
  parser.add_argument("--window_unit", default="tokens", choices=WINDOW_UNITS)
  parser.add_argument("--out", default="mask.png")
  args = parser.parse_args(argv)
  spec = parse_variant(args.variant, window_unit=args.window_unit)
  draw(spec, args.tokens, args.out)
  print(f"wrote {args.out}: {spec.name}, {args.tokens} tokens, {math.prod((spec.k * args.tokens,) * 2)} cells")


if __name__ == "__main__":
  main()
