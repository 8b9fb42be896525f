"""The explicit PHD mask against a brute-force loop over the rules of PAPER.md."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phd_jax import masks


def brute_force_mask(T, K, W, C, unit, seg=None, pos=None):
  """Direct transcription of PAPER.md with 1-based copies, one (query, key) pair at a time."""
  seg = [1] * T if seg is None else list(seg)
  pos = list(range(T)) if pos is None else list(pos)
  out = np.zeros((T * K, T * K), bool)
  for p, a, q, b in itertools.product(range(T), range(1, K + 1), range(T), range(1, K + 1)):
    if seg[p] != seg[q]:
      continue
    ok = (b == 1 and q < p) or (q == p and b <= a)
    if W > 0 and a >= 2 and b >= 2 and not ok:
      if unit == "tokens":
        r = lambda tok, copy: tok * (K - 1) + (copy - 2)
        ok = 0 < r(p, a) - r(q, b) <= W
      else:
        ok = 0 < p - q <= W
      if ok and C is not None:
        ok = pos[p] // C == pos[q] // C
    out[p * K + a - 1, q * K + b - 1] = ok
  return out


CASES = [(T, K, W, C, unit)
         for T in (1, 5, 9)
         for K in (1, 2, 3, 4)
         for W, C in ((0, None), (1, None), (3, None), (5, None), (2, 2), (4, 3), (6, 4))
         for unit in masks.WINDOW_UNITS
         if not (K == 1 and W > 0) and not (W == 0 and unit == "positions")]


@pytest.mark.parametrize("T,K,W,C,unit", CASES)
def test_matches_brute_force(T, K, W, C, unit):
  got = masks.phd_mask(T, K, W, C, unit)
  assert isinstance(got, np.ndarray) and got.shape == (T * K, T * K)
  np.testing.assert_array_equal(got, brute_force_mask(T, K, W, C, unit))


@pytest.mark.parametrize("K,W,C,unit", [(1, 0, None, "tokens"), (3, 0, None, "tokens"),
                                        (2, 3, None, "tokens"), (3, 4, 3, "tokens"),
                                        (4, 2, 2, "positions")])
def test_packed_segments_and_positions_with_batch(K, W, C, unit):
  rng = np.random.default_rng(K * 10 + W)
  T, B = 12, 3
  seg = np.sort(rng.integers(1, 4, size=(B, T)), axis=1)
  pos = np.stack([np.concatenate([np.arange((s == d).sum()) for d in np.unique(s)])
                  for s in seg])
  got = masks.phd_mask(T, K, W, C, unit, segment_ids=seg, positions=pos)
  assert got.shape == (B, T * K, T * K)
  for b in range(B):
    np.testing.assert_array_equal(got[b], brute_force_mask(T, K, W, C, unit, seg[b], pos[b]))


def test_under_jit_matches_numpy():
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 3]])
  pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  f = jax.jit(lambda s, p: masks.phd_mask(8, 3, 4, 2, "tokens", segment_ids=s, positions=p))
  got = f(jnp.asarray(seg), jnp.asarray(pos))
  assert isinstance(got, jax.Array)
  np.testing.assert_array_equal(np.asarray(got),
                                masks.phd_mask(8, 3, 4, 2, "tokens", segment_ids=seg,
                                               positions=pos))


@pytest.mark.parametrize("name", ["Vanilla", "PHD-3", "PHD-SWA-2-16-inf", "PHD-CSWA-3-4-4",
                                  "PHD-SWA-5-16-∞"])
def test_properties(name):
  spec = masks.parse_variant(name)
  T, K = 10, spec.k
  m = masks.spec_mask(spec, T)
  tok, copy = np.divmod(np.arange(T * K), K)
  # Originals among themselves form a vanilla causal mask.
  orig = copy == 0
  np.testing.assert_array_equal(m[np.ix_(orig, orig)], np.tril(np.ones((T, T), bool)))
  # Originals never see hidden copies; the same holds for any query and a later token.
  assert not m[np.ix_(orig, ~orig)].any()
  assert not (m & (tok[None, :] > tok[:, None])).any()
  # A hidden key is visible only inside its own token (PHD) or within the window.
  q_tok, k_tok = np.meshgrid(tok, tok, indexing="ij")
  hidden_key = (copy > 0)[None, :] & np.ones_like(m)
  if spec.window == 0:
    assert not (m & hidden_key & (q_tok != k_tok)).any()
  else:
    assert not (m & hidden_key & (q_tok - k_tok > spec.window)).any()
  if spec.chunk:
    chunk_q, chunk_k = q_tok // spec.chunk, k_tok // spec.chunk
    assert not (m & hidden_key & (chunk_q != chunk_k)).any()


def test_cswa_never_crosses_a_document_or_chunk_with_packing():
  seg = np.array([1] * 5 + [2] * 7)
  pos = np.array(list(range(5)) + list(range(7)))
  m = masks.phd_mask(12, 3, 8, 4, segment_ids=seg, positions=pos)
  tok = np.arange(36) // 3
  hidden = np.arange(36) % 3 > 0
  q, k = np.meshgrid(tok, tok, indexing="ij")
  assert not (m & (seg[q] != seg[k])).any()
  cross_chunk = (pos[q] // 4 != pos[k] // 4) & hidden[None, :] & hidden[:, None]
  assert not (m & cross_chunk).any()


@pytest.mark.parametrize("name,fields", [
    ("Vanilla", dict(k=1)),
    ("PHD-2", dict(k=2)),
    ("PHD-SWA-5-16-∞", dict(k=5, window=16)),
    ("PHD-SWA-3-16-inf", dict(k=3, window=16)),
    ("phd-swa-2-4", dict(k=2, window=4)),
    ("PHD-CSWA-3-16-32", dict(k=3, window=16, chunk=32)),
])
def test_names_round_trip(name, fields):
  spec = masks.parse_variant(name)
  assert spec == masks.PHDSpec(**fields)
  assert masks.parse_variant(spec.name) == spec


@pytest.mark.parametrize("kwargs,field", [
    (dict(k=0), "k"), (dict(k=2, window=-1), "window"), (dict(k=2, chunk=4), "chunk"),
    (dict(k=2, window=2, chunk=0), "chunk"), (dict(k=1, window=4), "window"),
    (dict(k=2, window=2, window_unit="bytes"), "window_unit"),
    (dict(k=2, positions="rotary"), "positions"), (dict(k=2.5), "k"),
])
def test_impossible_settings_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    masks.PHDSpec(**kwargs)


@pytest.mark.parametrize("name", ["PHD", "PHD-SWA-2", "CSWA-2-4-4", "PHD-0", "PHD-SWA-1-4-inf",
                                  "PHD-CSWA-2-4-0", "vanila"])
def test_bad_names_raise(name):
  with pytest.raises(ValueError, match="k|window|chunk|variant"):
    masks.parse_variant(name)


@pytest.mark.parametrize("T,K,W,C,unit", [(8, 3, 4, 4, "tokens"), (9, 2, 3, None, "tokens"),
                                         (9, 4, 2, 3, "positions"), (5, 3, 0, None, "tokens")])
def test_picture_cells_show_the_window_and_what_chunks_cut(T, K, W, C, unit):
  spec = masks.PHDSpec(k=K, window=W, chunk=C, window_unit=unit)
  kinds = masks.cell_kinds(spec, T)
  allowed, unchunked = brute_force_mask(T, K, W, C, unit), brute_force_mask(T, K, W, None, unit)
  hidden_key = np.arange(T * K) % K > 0
  earlier_key = (np.arange(T * K) // K)[None, :] < (np.arange(T * K) // K)[:, None]
  np.testing.assert_array_equal(kinds > 0, allowed | unchunked)
  np.testing.assert_array_equal(kinds == 1, allowed & ~hidden_key)
  np.testing.assert_array_equal(kinds == 3, allowed & hidden_key & earlier_key)
  np.testing.assert_array_equal(kinds == 4, unchunked & ~allowed)
  assert (kinds == 3).any() == (W > 0) and (kinds == 4).any() == (C is not None)


def test_picture(tmp_path):
  from matplotlib.colors import to_rgb
  from matplotlib.image import imread

  def colours_in(variant):
    out = tmp_path / f"{variant}.png"
    masks.main([variant, "--tokens", "8", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(out)[..., :3]
    return lambda colour: bool((np.abs(pixels - to_rgb(colour)).max(-1) < 1.5 / 255).any())

  window, cut = masks.CELL_KINDS[3][1], masks.CELL_KINDS[4][1]
  cswa, swa = colours_in("PHD-CSWA-3-4-4"), colours_in("PHD-SWA-3-4-inf")
  line = masks.CHUNK_BOUNDARY
  assert cswa(window) and cswa(cut) and cswa(line)  # window, cut cells, chunk boundaries
  assert swa(window) and not swa(cut) and not swa(line)
