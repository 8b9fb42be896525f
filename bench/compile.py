"""Compile cost of one train step against depth and sequence length, scanned and looped.

  python bench/compile.py                                  # the README table (minutes)
  python bench/compile.py --layers=2,16 --seq_lens=4096 --skip_compile

One train step exactly as `phd_jax.train.setup` builds it (loss, gradients,
AdamW update and the logged metrics), jitted with the train state's shardings on one
device and lowered from abstract inputs (nothing is run). Each row: seconds to trace
and lower to StableHLO, seconds for XLA to compile it, and the StableHLO line count (the
program size, exact). The model is the tiny config's width (d_model 128, 4 heads); the
layers are scanned (`model.scan_layers=True`, the default) or a Python loop. Target:
scanned, 16 layers lower within 1.3x of 2 layers.
"""

from __future__ import annotations

import argparse
import time

import jax

from phd_jax import config as config_lib
from phd_jax import sharding, state, train

from common import ints, load_config  # siblings in bench/


def make_config(variant: str, num_layers: int, seq_len: int, scan_layers: bool):
  c = load_config("tiny", variant)
  c.model.update(num_layers=num_layers, scan_layers=scan_layers, attention_impl="auto")
  c.update(seq_len=seq_len, batch_size=1, microbatches=1)
  c.mesh.update(data=1, fsdp=1, tensor=1)
  config_lib.validate(c)
  return c


def lower_train_step(config):
  """The jitted train step lowered from abstract state and batch: (lowered, seconds)."""
  training = train.setup(config, sharding.make_mesh(config, jax.devices()[:1]))
  abstract = state.abstract_state(config, training.mesh)
  start = time.perf_counter()
  with jax.set_mesh(training.mesh):
    lowered = training.step.jitted.lower(abstract, training.abstract_batch())
  return lowered, time.perf_counter() - start


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", default="2,8,16")
  p.add_argument("--seq_lens", default="512,4096")
  p.add_argument("--variants", default="Vanilla,PHD-CSWA-3-16-32")
  p.add_argument("--layouts", default="scanned,looped")
  p.add_argument("--looped_max_layers", type=int, default=16,
                 help="skip looped rows deeper than this (they lower slowly)")
  p.add_argument("--skip_compile", action="store_true", help="trace and lower only")
  args = p.parse_args(argv)
  layers = ints(args.layers)
  print(f"one train step (tiny width: d_model 128, 4 heads x 32, vocab 384), batch 1, "
        f"{jax.devices()[0].device_kind}; lower = trace + lower to StableHLO")
  ratio = f"x L={layers[0]}"
  header = (f"{'T':>5} {'variant':<18} {'layout':<8} {'L':>3} {'lower s':>8} {ratio:>7} "
            f"{'compile s':>10} {'HLO lines':>10}")
  print(header + "\n" + "-" * len(header))
  # warm-up: the first lowering also pays for imports and JAX's own caches
  lower_train_step(make_config("Vanilla", layers[0], 64, True))
  for seq_len in ints(args.seq_lens):
    for variant in (v for v in args.variants.split(",") if v):
      for layout in (x for x in args.layouts.split(",") if x):
        first = None
        for num_layers in layers:
          if layout == "looped" and num_layers > args.looped_max_layers:
            continue
          config = make_config(variant, num_layers, seq_len, layout == "scanned")
          lowered, lower_s = lower_train_step(config)
          first = first or lower_s
          lines = len(lowered.as_text().splitlines())
          compile_s = float("nan")
          if not args.skip_compile:
            start = time.perf_counter()
            lowered.compile()
            compile_s = time.perf_counter() - start
          print(f"{seq_len:>5} {variant:<18} {layout:<8} {num_layers:>3} {lower_s:>8.2f} "
                f"{lower_s / first:>7.2f} {compile_s:>10.2f} {lines:>10,}", flush=True)


if __name__ == "__main__":
  main()
