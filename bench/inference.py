"""Inference cost of PHD against Vanilla: decoding latency, prefill time, KV cache bytes.

  python bench/inference.py                                   # CPU-sized defaults
  python bench/inference.py --decode_config=olmo2_550m --prefill_config=olmo2_550m \
      --dtype=bfloat16 --context=2048 --prompt_len=2048 --prefill_ks=1,2,4,8,16  # one GPU/TPU

(a) decode: ms per token at batch 1 with --context tokens already cached, for PHD-K and
    PHD-CSWA-K-16-32, relative to Vanilla (the paper, 550M on an A100: at most ~1.2x up to
    K = 256, since a memory-bound step reads the same weights and cache whatever K).
(b) prefill: time to prefill one --prompt_len prompt with PHD-K, PHD-SWA-K-16-inf and
    PHD-CSWA-K-16-32, relative to Vanilla (the paper's Figure 9 at K = 16 on 2048 tokens:
    SWA x72.88, CSWA x1.08).
(c) KV cache bytes per variant for --cache_seq_len tokens at batch 1.
Configs are names of files in configs/. Parameters are random (speed does not depend on
them) and shared by all K; times exclude compilation; each is the fastest of several calls
interleaved with those of the Vanilla it is compared to.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phd_jax import attention as attention_lib
from phd_jax import config as config_lib
from phd_jax import decode
from phd_jax.masks import PHDSpec
from phd_jax.model import Transformer

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

WINDOW, CHUNK = 16, 32  # the paper's PHD-CSWA-K-16-32 and PHD-SWA-K-16-∞


def load_config(name: str, dtype: str, variant: str = "Vanilla"):
  """configs/NAME.py with random parameters: synthetic data, so no tokenizer is needed."""
  config = config_lib.load_config(os.path.join(CONFIGS, f"{name}.py"), variant)
  config.model.dtype = dtype
  config.data.update(source="synthetic", tokenizer="byte")
  config_lib.validate(config, training=False)
  return config


def variants(kind: str, k: int) -> PHDSpec:
  if k == 1:
    return PHDSpec()
  return {"PHD": PHDSpec(k=k), "SWA": PHDSpec(k=k, window=WINDOW),
          "CSWA": PHDSpec(k=k, window=WINDOW, chunk=CHUNK)}[kind]


class SharedParams:
  """One set of random parameters, viewed as a model of any variant (K adds no weights)."""

  def __init__(self, config):
    self.cfg = config_lib.model_config(config)
    model = Transformer(self.cfg, PHDSpec(), rngs=nnx.Rngs(0))
    self.state = nnx.state(model)
    self.count = sum(x.size for x in jax.tree.leaves(self.state))

  def decoder(self, spec: PHDSpec) -> decode.Decoder:
    shape = nnx.eval_shape(lambda: Transformer(self.cfg, spec, rngs=nnx.Rngs(0)))
    return decode.Decoder(nnx.merge(nnx.graphdef(shape), self.state))


def fastest_ms(runs: dict, repeats: int) -> dict:
  """ms of the fastest of `repeats` calls of each run, after a compiling call of each.

  Calls are interleaved (run 1, run 2, ..., run 1, ...) so that every run meets the same
  load from other processes, and the fastest call is the least disturbed one.
  """
  for run in runs.values():
    jax.block_until_ready(run())
  best = {name: float("inf") for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      best[name] = min(best[name], 1000 * (time.perf_counter() - start))
  return best


def decode_run(params: SharedParams, spec: PHDSpec, context: int, steps: int):
  """One decoding step per call with `context` tokens cached, batch 1."""
  decoder = params.decoder(spec)
  cache = decode.init_cache(params.cfg, spec, 1, context + steps + 2)
  state = {"cache": cache.replace(length=jnp.int32(context))}  # cached values do not matter
  token_B = jnp.ones((1,), jnp.int32)

  def run():
    logits_BV, state["cache"] = decoder.step(state["cache"], token_B)
    return logits_BV
  return run


def prefill_run(params: SharedParams, spec: PHDSpec, prompt_len: int):
  decoder = params.decoder(spec)
  prompt = np.random.default_rng(0).integers(3, params.cfg.vocab_size, prompt_len).tolist()
  return lambda: decoder.prefill([prompt])[0]


def ratio_table(kinds: tuple[str, ...], ks: list[int], make_run, repeats: int) -> None:
  """ms of Vanilla and of each variant kind at each K, with its ratio to the Vanilla
  measured alongside it (K = 1 is Vanilla itself)."""
  names = {"PHD": "PHD-K", "SWA": f"PHD-SWA-K-{WINDOW}-inf",
           "CSWA": f"PHD-CSWA-K-{WINDOW}-{CHUNK}"}
  print(f"{'K':>4} | {'Vanilla':>10} | " + " | ".join(f"{names[kind]:>20}" for kind in kinds))
  for k in ks:
    runs = {"Vanilla": make_run(PHDSpec())}
    if k > 1:
      runs.update({kind: make_run(variants(kind, k)) for kind in kinds})
    ms = fastest_ms(runs, repeats)
    cells = [ms.get(kind, ms["Vanilla"]) for kind in kinds]
    print(f"{k:>4} | {ms['Vanilla']:>7.2f} ms | " +
          " | ".join(f"{c:>10.2f} ms x{c / ms['Vanilla']:>5.2f}" for c in cells))


def ints(text: str) -> list[int]:
  return [int(t) for t in text.split(",")]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--decode_config", default="olmo2_151m", help="(a): a file in configs/")
  parser.add_argument("--prefill_config", default="tiny", help="(b): a file in configs/")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--decode_ks", type=ints, default=[1, 2, 4, 8, 16, 32])
  parser.add_argument("--context", type=int, default=512, help="(a): tokens already cached")
  parser.add_argument("--steps", type=int, default=10, help="(a): timed steps per K")
  parser.add_argument("--prefill_ks", type=ints, default=[1, 2, 4, 8, 16])
  parser.add_argument("--prompt_len", type=int, default=1024, help="(b): prompt tokens")
  parser.add_argument("--repeats", type=int, default=5, help="(b): timed prefills per cell")
  parser.add_argument("--cache_seq_len", type=int, default=4096, help="(c)")
  parser.add_argument("--parts", default="a,b,c")
  args = parser.parse_args()
  parts = args.parts.split(",")
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, dtype {args.dtype}, "
        f"attention {attention_lib.resolve('auto')}")

  if "a" in parts:
    params = SharedParams(load_config(args.decode_config, args.dtype))
    print(f"\n(a) decode latency per token, batch 1, {args.context} tokens cached: configs/"
          f"{args.decode_config}.py, {params.count / 1e6:.1f}M parameters")
    ratio_table(("PHD", "CSWA"), args.decode_ks,
                lambda spec: decode_run(params, spec, args.context, args.steps), args.steps)

  if "b" in parts:
    params = SharedParams(load_config(args.prefill_config, args.dtype))
    print(f"\n(b) prefill of one {args.prompt_len}-token prompt: configs/{args.prefill_config}"
          f".py, {params.count / 1e6:.1f}M parameters")
    ratio_table(("PHD", "SWA", "CSWA"), args.prefill_ks,
                lambda spec: prefill_run(params, spec, args.prompt_len), args.repeats)

  if "c" in parts:
    print(f"\n(c) KV cache, {args.cache_seq_len} tokens, batch 1, configs/"
          f"{args.decode_config}.py, {args.dtype}")
    print(f"{'variant':<22} | {'unit':<9} | {'originals MiB':>13} | {'hidden window KiB':>17} | "
          f"{'total / Vanilla':>15}")
    rows = [("Vanilla", "tokens"), ("PHD-2", "tokens"), ("PHD-16", "tokens"),
            ("PHD-SWA-3-16-inf", "tokens"), ("PHD-SWA-3-16-inf", "positions"),
            ("PHD-CSWA-3-16-32", "tokens"), ("PHD-CSWA-16-16-32", "positions")]
    vanilla_bytes = None
    for variant, unit in rows:
      config = load_config(args.decode_config, args.dtype, variant)
      config.phd.window_unit = unit
      got = decode.kv_cache_bytes(config, args.cache_seq_len, 1)
      vanilla_bytes = vanilla_bytes or got["total"]
      print(f"{got['variant']:<22} | {unit:<9} | {got['originals'] / 2**20:>13.2f} | "
            f"{got['hidden_window'] / 2**10:>17.1f} | {got['total'] / vanilla_bytes:>15.4f}")


if __name__ == "__main__":
  main()
