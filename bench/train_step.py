"""Training step time and throughput of PHD and PLT variants against Vanilla.

  python bench/train_step.py                      # CPU-sized defaults (a few minutes)
  python bench/train_step.py --d_model=1536 --layers=16 --heads=16 --kv_heads=4 \\
      --head_dim=96 --mlp=4096 --vocab=50304 --batch=8 --dtype=bfloat16 --remat=full \\
      --mesh=1,-1,1 --seq_lens=512,2048,4096      # the paper's 550M on an accelerator

The whole jitted train step of `phd_jax.train` (forward, backward, AdamW update) on one
fixed synthetic batch, over all devices. Each row: median step time over --steps steps
after a compiling warm-up (the variants of one T take their steps in turns), original
tokens/s and copies/s (K x; a PLT-L-W's K is its L loops, each token's rows through the
blocks), model FLOP/s (and MFU where the chip's peak is known), `x van` = step time /
Vanilla's at the same T, `FLOP x` = the variant's training FLOPs / Vanilla's
(`flops.flops_per_sequence`: the work it must do), and `/ K van` = step time / (K x
Vanilla's): 1.0 means the K copies cost exactly K times a vanilla step; below 1, fixed
costs (optimizer update, embedding, the output layer on the final copy only) are shared.
`x van` near `FLOP x` means a variant runs as fast as its FLOPs allow. The default
variants put PLT-K-16 (the window of the PHD-CSWA-K-16-32 beside it) next to each K.
"""

from __future__ import annotations

import argparse
import statistics

import jax

from phd_jax import config as config_lib
from phd_jax import data, defaults, flops, train

from common import ints, seconds_in_turns  # a sibling in bench/


def make_config(args, variant: str, seq_len: int):
  c = defaults.get_config(variant)
  c.model.update(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                 num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                 mlp_dim=args.mlp, dtype=args.dtype, remat=args.remat,
                 attention_impl=args.impl)
  c.update(seq_len=seq_len, batch_size=args.batch, microbatches=args.microbatches)
  c.optim.warmup_steps = 10
  c.data.update(source="synthetic", prefetch=0)
  data_size, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  c.mesh.update(data=data_size, fsdp=fsdp, tensor=tensor)
  config_lib.validate(c)
  return c


class RepeatedStep:
  """One variant's train step on a fixed batch: each call takes a step from the last state."""

  def __init__(self, config):
    self.training = train.setup(config)
    self.state = self.training.init()
    self.batch = self.training.global_batch(next(data.make_iterator(config)))

  def __call__(self):
    self.state, metrics = self.training.step(self.state, self.batch)
    return self.state, metrics  # both: timing waits for the update too


def step_seconds(configs, steps: int) -> list[float]:
  """Median step time of each config, the steps taken in turns (one step of each config
  per round)."""
  seconds = seconds_in_turns({i: RepeatedStep(c) for i, c in enumerate(configs)}, steps)
  return [statistics.median(seconds[i]) for i in range(len(configs))]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default="Vanilla,PHD-CSWA-2-16-32,PLT-2-16,PHD-CSWA-3-16-32,"
                 "PLT-3-16,PHD-CSWA-4-16-32,PLT-4-16",
                 help="comma-separated; Vanilla is the baseline")
  p.add_argument("--seq_lens", default="512,2048")
  p.add_argument("--batch", type=int, default=1, help="global sequences per step")
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--head_dim", type=int, default=32)
  p.add_argument("--mlp", type=int, default=512)
  p.add_argument("--vocab", type=int, default=512)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
  p.add_argument("--impl", default="auto", help="attention_impl")
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  variants = ["Vanilla"] + [v for v in variants if v != "Vanilla"]

  devices = jax.devices()
  peak = flops.peak_flops(devices[0].device_kind)
  print(f"train step: {args.layers} layers d={args.d_model} heads {args.heads}/"
        f"{args.kv_heads}x{args.head_dim} mlp {args.mlp} vocab {args.vocab}, batch "
        f"{args.batch}, {args.dtype}, remat {args.remat}, attention {args.impl}, "
        f"{len(devices)} x {devices[0].device_kind}, median of {args.steps} steps")
  header = (f"{'T':>5} {'variant':<18} {'K':>2} {'step ms':>9} {'tokens/s':>10} "
            f"{'copies/s':>10} {'x van':>6} {'FLOP x':>6} {'/ K van':>7} {'TFLOP/s':>8} "
            f"{'MFU':>6}")
  print(header + "\n" + "-" * len(header))
  for seq_len in ints(args.seq_lens):
    configs = [make_config(args, variant, seq_len) for variant in variants]
    times = step_seconds(configs, args.steps)
    vanilla = times[0]
    specs = [config_lib.phd_spec(c) for c in configs]
    work = [flops.flops_per_sequence(config_lib.model_config(c), spec, seq_len)
            for c, spec in zip(configs, specs)]
    for spec, seconds, sequence_flops in zip(specs, times, work):
      tokens = args.batch * seq_len / seconds
      flops_per_s = args.batch * sequence_flops / seconds
      mfu = f"{flops_per_s / (peak * len(devices)):6.1%}" if peak else f"{'-':>6}"
      print(f"{seq_len:>5} {spec.name:<18} {spec.k:>2} {seconds * 1e3:>9.1f} {tokens:>10,.0f} "
            f"{tokens * spec.k:>10,.0f} {seconds / vanilla:>6.2f} "
            f"{sequence_flops / work[0]:>6.2f} {seconds / (spec.k * vanilla):>7.2f} "
            f"{flops_per_s / 1e12:>8.3f} {mfu}", flush=True)


if __name__ == "__main__":
  main()
