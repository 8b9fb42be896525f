"""Prompts checked and laid out for prefill: left padding to a length bucket, batch rows to
a multiple of the data-parallel devices.

Every distinct prompt length would be its own prefill program (shapes are static), so
prompts are left-padded to the smallest of a few `buckets` (powers of two by default):
lengths 1..2048 compile at most 12 programs. Padding is masked like any left padding, so
outputs do not change, and prefill drops the padding every row shares, so it takes no
cache slots.
"""

from __future__ import annotations

import dataclasses

import numpy as np

POWERS_OF_TWO = tuple(2**i for i in range(24))


@dataclasses.dataclass(frozen=True)
class Layout:
  tokens_BT: np.ndarray  # int32, left-padded with 0
  first_slot_B: np.ndarray  # int32: each row's first token's slot
  lengths: tuple[int, ...]  # of every row (filler rows: 1)
  rows: int  # the caller's rows; those after them only fill the batch
  cache_len: int


def positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}")


def check_buckets(buckets) -> tuple[int, ...]:
  """Sorted bucket lengths; None or () = exact prompt lengths (a program per length)."""
  buckets = tuple(buckets or ())
  for length in buckets:
    positive_int("every prompt bucket", length)
  return tuple(sorted(set(int(b) for b in buckets)))


def check_prompts(prompts, vocab_size: int) -> list[list[int]]:
  """The prompts as lists of ints, or a ValueError saying which prompt is wrong and why."""
  if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not len(prompts):
    raise ValueError(f"prompts must be a non-empty list of token-id lists; got {prompts!r}")
  checked = []
  for i, prompt in enumerate(prompts):
    if isinstance(prompt, (int, np.integer)):
      raise ValueError("prompts must be a list of token-id lists; got a flat list of ints "
                       "(wrap a single prompt as [prompt])")
    ids = np.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0:
      raise ValueError(f"prompt {i} must be a non-empty 1-D list of token ids; got shape "
                       f"{ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"prompt {i} must hold integer token ids; got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, vocab_size={vocab_size}): "
                       f"min {ids.min()}, max {ids.max()}")
    checked.append(ids.tolist())
  return checked


def layout(prompts, vocab_size: int, max_new_tokens: int, cache_len=None,
           buckets: tuple[int, ...] = (), row_multiple: int = 1) -> Layout:
  """Checked prompts left-padded to `[B, T]` with T the smallest bucket holding the longest
  (its own length past the last bucket), and rows filled up to a multiple of
  `row_multiple` with one-token prompts.

  The cache needs the longest prompt + max_new_tokens - 1 slots (the last new token is
  never fed back; prefill drops the bucket's padding): `cache_len` must hold that. Its
  default, T + max_new_tokens - 1, holds every prompt of the bucket, so that the bucket
  alone decides the program.
  """
  prompts = check_prompts(prompts, vocab_size)
  positive_int("max_new_tokens", max_new_tokens)
  lengths = [len(p) for p in prompts]
  longest = max(lengths)
  if cache_len is not None:
    positive_int("cache_len", cache_len)
    needed = longest + max_new_tokens - 1
    if needed > cache_len:
      row = lengths.index(longest)
      raise ValueError(f"prompt {row} has {longest} tokens; with max_new_tokens="
                       f"{max_new_tokens} the cache needs {needed} slots, but cache_len="
                       f"{cache_len}")
  T = next((b for b in buckets if b >= longest), longest)
  rows = len(prompts)
  prompts += [[0]] * (-rows % row_multiple)
  tokens_BT = np.zeros((len(prompts), T), np.int32)
  for row, prompt in enumerate(prompts):
    tokens_BT[row, T - len(prompt):] = prompt
  first_slot_B = np.array([T - len(p) for p in prompts], np.int32)
  cache_len = T + max_new_tokens - 1 if cache_len is None else int(cache_len)
  return Layout(tokens_BT, first_slot_B, tuple(len(p) for p in prompts), rows, cache_len)
