"""bench/train_step.py and bench/inference.py at their smallest settings, run as a user runs
them: each prints a PLT row beside PHD's at the same K, with the time ratio to Vanilla, the
FLOP ratio of `phd_jax.flops` for that variant, and (decode) the cache's bytes counted here
from its arrays' shapes. The times themselves are not checked, only how they are related."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from phd_jax import config as config_lib
from phd_jax import defaults, flops
from phd_jax.masks import PHDSpec, parse_variant
from phd_jax.model import ModelConfig
from run_helpers import REPO_ROOT, tiny_config

FLOAT32 = 4  # bytes, the benches' default dtype
INT32 = 4


def run_bench(script: str, *flags: str) -> str:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device: the benches' batch of 1 on a data mesh
  result = subprocess.run([sys.executable, f"bench/{script}", *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def cells(line: str) -> list[str]:
  return [c.strip() for c in line.split("|")]


@pytest.mark.slow
def test_train_step_table_puts_plt_beside_phd_with_its_flop_ratio():
  shape = dict(vocab_size=128, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
               head_dim=16, mlp_dim=64)
  variants = ["Vanilla", "PHD-CSWA-2-16-32", "PLT-2-4"]
  out = run_bench("train_step.py", "--seq_lens=32", "--steps=1",
                  f"--variants={','.join(variants)}", "--vocab=128", "--d_model=32",
                  "--layers=1", "--heads=2", "--kv_heads=1", "--head_dim=16", "--mlp=64")
  rows = [line.split() for line in out.splitlines() if line.startswith("   32 ")]
  assert [r[1] for r in rows] == variants
  cfg = dataclasses.replace(config_lib.model_config(defaults.get_config()), **shape)
  vanilla_flops = flops.flops_per_sequence(cfg, PHDSpec(), 32)
  vanilla_tokens = float(rows[0][4].replace(",", ""))
  for _, name, k, _, tokens, _, time_ratio, flop_ratio, per_k, _, _ in rows:
    spec = parse_variant(name)
    assert int(k) == spec.k
    # from the unrounded times; tokens/s is printed to ~5 digits where a sub-millisecond step
    # shows only 1-2 in its ms column, so its ratio is the one to compare with
    assert float(time_ratio) == pytest.approx(vanilla_tokens / float(tokens.replace(",", "")),
                                              abs=0.006)
    assert float(per_k) == pytest.approx(float(time_ratio) / spec.k, rel=0.05, abs=0.011)
    assert float(flop_ratio) == pytest.approx(
        flops.flops_per_sequence(cfg, spec, 32) / vanilla_flops, abs=0.006)
  assert float(rows[2][7]) > 1.5  # PLT-2's FLOPs: two passes through the blocks


def cache_bytes_from_shapes(cfg: ModelConfig, name: str, slots: int) -> int:
  """The decoding cache of one row, summed from the arrays it holds: K and V of every slot
  and layer; PLT-L-W: the later loops' K/V of W-1 tokens with their positions and loops,
  and L-1 loop outputs of width D; PHD-CSWA-K-W-C: W hidden entries, likewise."""
  kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * FLOAT32
  spec = parse_variant(name)
  entries = {"Vanilla": 0, "PHD-2": 0, "PHD-CSWA-2-16-32": 16, "PLT-2-4": 3}[name]
  loop_outputs = (spec.k - 1) * cfg.d_model * FLOAT32 if name.startswith("PLT") else 0
  return slots * kv + entries * (kv + 2 * INT32) + loop_outputs + 2 * INT32  # + first slot, length


@pytest.mark.slow
def test_inference_tables_put_plt_beside_phd_with_flops_and_cache_bytes():
  prompt_len, context = 24, 8
  out = run_bench("inference.py", "--parts=prefill,decode", "--prefill_ks=2",
                  f"--prompt_len={prompt_len}", "--repeats=1", "--decode_ks=2", "--batches=1",
                  f"--context={context}", "--steps=1", "--plt_window=4")
  lines = out.splitlines()
  cfg = config_lib.model_config(tiny_config())

  # prefill: K = 2, a cell per variant: x time (FLOP x ratio, tokens with all copies/loops)
  header = cells(next(line for line in lines if line.startswith("  K | ")))
  assert header[-2:] == ["PHD-CSWA-K-16-32", "PLT-K-4"]
  row = cells(next(line for line in lines if line.startswith("  2 | ")))
  parsed = [re.fullmatch(r"x\s*([\d.]+) \(FLOP x\s*([\d.]+),\s*(\d+)\)", c) for c in row[2:]]
  assert all(parsed), row
  plt_time, plt_flops, plt_tokens = parsed[-1].groups()
  # loop 1 runs on the last 1 + L*(W-1) tokens: its window's reach through the 4 layers
  assert int(plt_tokens) == 1 + cfg.num_layers * 3
  vanilla = flops.prefill_flops(cfg, PHDSpec(), prompt_len, 1)
  assert float(plt_flops) == pytest.approx(flops.prefill_flops(
      cfg, parse_variant("PLT-2-4"), prompt_len, int(plt_tokens)) / vanilla, abs=0.006)
  assert float(plt_time) > 0

  # decode: a row per variant: K | name | FLOP x | cache KiB (x van) | B=1 ms (x van)
  decode_rows = [cells(line) for line in lines if re.match(r"\s+[12] \| [VP]", line)]
  assert [r[1] for r in decode_rows] == ["Vanilla", "PHD-2", "PHD-CSWA-2-16-32", "PLT-2-4"]
  vanilla_bytes = cache_bytes_from_shapes(cfg, "Vanilla", context)
  vanilla_flops = flops.decode_flops(cfg, PHDSpec(), context)
  for _, name, flop_ratio, cache, timing in decode_rows:
    kib, cache_ratio = (float(x) for x in re.fullmatch(r"([\d.]+) \(x([\d.]+)\)", cache).groups())
    expected = cache_bytes_from_shapes(cfg, name, context)
    assert kib == pytest.approx(expected / 2**10, abs=0.051)
    assert cache_ratio == pytest.approx(expected / vanilla_bytes, abs=0.0006)
    assert float(flop_ratio) == pytest.approx(
        flops.decode_flops(cfg, parse_variant(name), context) / vanilla_flops, abs=0.006)
    ms, ratio = (float(x) for x in re.fullmatch(r"([\d.]+) \(x\s*([\d.]+)\)", timing).groups())
    assert ms > 0 and np.isfinite(ratio)
  assert decode_rows[0][4].endswith("(x 1.00)")
