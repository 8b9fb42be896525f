"""Inference cost of PHD and PLT against Vanilla: prefill, decoding, compiled programs,
cache bytes.

  python bench/inference.py                   # CPU-sized defaults (~30 min on 2 busy cores)
  python bench/inference.py --parts=prefill --prefill_ks=16   # one part, fewer cells
  python bench/inference.py --parts=decode,cache --plt_window=64   # PLT-K-64 rows
  python bench/inference.py --decode_config=olmo2_550m --prefill_config=olmo2_550m \
      --dtype=bfloat16 --context=2048 --prompt_len=2048 --decode_ks=1,2,4,16,64,256  # a GPU

prefill  one --prompt_len prompt with PHD-K, PHD-SWA-K-16-∞ (the exact truncated prefill,
         and the paper's, which runs every prompt token's copies), PHD-CSWA-K-16-32 and
         PLT-K-W (K loops, W = --plt_window): time ratio to Vanilla, measured interleaved,
         FLOP ratio (`flops.prefill_flops`: the work each must do) and how many trailing
         tokens' hidden copies (PLT: later loops) run. The paper (Fig. 9a, K = 16, 2048
         tokens): SWA x72.88, CSWA x1.08.
decode   for PHD-K, PHD-CSWA-K-16-32 and PLT-K-W: the FLOP ratio to Vanilla of a step
         (`flops.decode_flops`), the cache's bytes at batch 1 with --context tokens
         (`decode.kv_cache_bytes`: the originals' (PLT: loop 0's) K/V, the window's hidden
         (later loops') K/V, indices and PLT's carried loop outputs), and ms per token at
         batch 1 and tokens/s at batches 8 and 32 with --context tokens cached, as ratios to
         Vanilla (the paper's Fig. 9b, 550M on an A100: at most ~1.2x up to K = 256, a
         memory-bound step reading the same weights and cache whatever K).
compile  prefill programs compiled for --compile_prompts random prompt lengths in
         [1, --prompt_len], with the default length buckets and without.
cache    KV cache bytes per variant for --cache_seq_len tokens at batch 1.
Configs are names of files in configs/. Parameters are random (speed does not depend on
them) and shared by all K; times exclude compilation; each is the fastest of several calls
interleaved with those of the Vanilla it is compared to.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from phd_jax import attention as attention_lib
from phd_jax import config as config_lib
from phd_jax import decode, flops
from phd_jax.decode import engine
from phd_jax.masks import PHDSpec, PLTSpec

import common  # a sibling in bench/
from common import SharedParams, ints

WINDOW, CHUNK = 16, 32  # the paper's PHD-CSWA-K-16-32 and PHD-SWA-K-16-∞
NAMES = {"PHD": "PHD-K", "SWA": f"PHD-SWA-K-{WINDOW}-∞", "SWA-full": "SWA, paper's prefill",
         "CSWA": f"PHD-CSWA-K-{WINDOW}-{CHUNK}"}


def load_config(name: str, dtype: str, variant: str = "Vanilla"):
  """configs/NAME.py in `dtype`, on synthetic data (no tokenizer needed)."""
  config = common.load_config(name, variant)
  config.model.dtype = dtype
  config_lib.validate(config, training=False)
  return config


def label(kind: str, plt_window: int) -> str:
  """A kind's column or row name, K standing for its copies (PLT: loops)."""
  if kind == "PLT":
    return f"PLT-K-{plt_window}" if plt_window else "PLT-K"
  return NAMES[kind]


def variant(kind: str, k: int, plt_window: int = WINDOW) -> PHDSpec | PLTSpec:
  if k == 1:
    return PHDSpec()
  if kind == "PLT":
    return PLTSpec(loops=k, window=plt_window)
  return {"PHD": PHDSpec(k=k), "SWA": PHDSpec(k=k, window=WINDOW),
          "SWA-full": PHDSpec(k=k, window=WINDOW),
          "CSWA": PHDSpec(k=k, window=WINDOW, chunk=CHUNK)}[kind]


def fastest_ms(runs: dict, repeats: int) -> dict:
  """ms of the fastest of `repeats` calls of each run, taken in turns: the least disturbed."""
  return {name: 1e3 * min(s) for name, s in common.seconds_in_turns(runs, repeats).items()}


def prefill_table(params: SharedParams, ks: list[int], prompt_len: int, repeats: int,
                  plt_window: int) -> None:
  """Per K: Vanilla's ms, and each variant's time ratio to it (FLOP ratio; hidden-copy
  (PLT: later-loop) tokens computed)."""
  prompt = np.random.default_rng(0).integers(3, params.cfg.vocab_size, prompt_len).tolist()
  kinds = ("PHD", "SWA", "SWA-full", "CSWA", "PLT")
  print(f"{'K':>3} | {'Vanilla':>9} | " +
        " | ".join(f"{label(kind, plt_window):>26}" for kind in kinds))
  for k in ks:
    runs, work, hidden = {}, {}, {}
    for kind in ("Vanilla",) + kinds:
      spec = variant(kind, 1 if kind == "Vanilla" else k, plt_window)
      decoder = params.decoder(spec, prompt_buckets=None)
      laid, n = decoder.layout([prompt])
      if kind == "SWA-full":  # every prompt token's copies, as the paper computes them
        n = prompt_len
      runs[kind] = (lambda d=decoder, n=n, laid=laid: engine._prefill_jit(
          d.graphdef, d.state, None, laid.first_slot_B, laid.cache_len, n, laid.tokens_BT)[0])
      work[kind], hidden[kind] = flops.prefill_flops(params.cfg, spec, prompt_len, n), n
    # the paper's SWA prefill is long: timed against its own Vanilla, fewer times
    full = {"Vanilla": runs["Vanilla"], "SWA-full": runs.pop("SWA-full")}
    ms = fastest_ms(runs, repeats)
    ratio, vanilla_ms = {kind: ms[kind] / ms["Vanilla"] for kind in ms}, ms["Vanilla"]
    ms = fastest_ms(full, max(1, repeats // 5))
    ratio["SWA-full"] = ms["SWA-full"] / ms["Vanilla"]
    cells = [f"x{ratio[kind]:>5.2f} (FLOP x{work[kind] / work['Vanilla']:>5.2f}"
             f", {hidden[kind]:>4})" for kind in kinds]
    print(f"{k:>3} | {vanilla_ms:>6.0f} ms | " + " | ".join(f"{c:>26}" for c in cells),
          flush=True)


def decode_table(params: SharedParams, config_name: str, dtype: str, ks: list[int],
                 batches: list[int], context: int, steps: int, plt_window: int) -> None:
  """Per K and variant: a step's FLOP ratio to Vanilla, the cache's KiB at batch 1 (ratio
  to Vanilla's), and at each batch the step's ms or tokens/s (time ratio to Vanilla)."""
  def cost(spec):  # (decode FLOPs, cache bytes) with `context` tokens cached
    config = load_config(config_name, dtype, spec.name)
    return (flops.decode_flops(params.cfg, spec, context),
            decode.kv_cache_bytes(config, context, 1)["total"])

  cells = [f"B={b} {'ms/token' if b == 1 else 'tokens/s'}" for b in batches]
  print(f"{'K':>4} | {'variant':<18} | {'FLOP x':>6} | {'cache KiB (x van)':>18} | " +
        " | ".join(f"{c:>22}" for c in cells))
  vanilla_flops, vanilla_bytes = cost(PHDSpec())
  for k in ks:
    specs = {kind: variant(kind, 1 if kind == "Vanilla" else k, plt_window)
             for kind in ("Vanilla", "PHD", "CSWA", "PLT") if kind == "Vanilla" or k > 1}
    row = {kind: [] for kind in specs}
    for batch in batches:
      runs = {kind: common.decode_step(params, spec, batch, context, steps + 1)
              for kind, spec in specs.items()}
      ms = fastest_ms(runs, steps)
      for kind in runs:
        value = ms[kind] if batch == 1 else 1000 * batch / ms[kind]
        ratio = ms[kind] / ms["Vanilla"]
        row[kind].append(f"{value:>10.1f} (x{ratio:>5.2f})")
    for kind, spec in specs.items():
      if kind != "Vanilla" or k == ks[0]:
        work, nbytes = cost(spec)
        print(f"{spec.k:>4} | {spec.name:<18} | {work / vanilla_flops:>6.2f} | "
              f"{nbytes / 2**10:>9.1f} (x{nbytes / vanilla_bytes:>5.3f}) | " +
              " | ".join(f"{v:>22}" for v in row[kind]), flush=True)


def compile_table(params: SharedParams, prompts: int, max_len: int) -> None:
  """Prefill programs traced for `prompts` random lengths, with and without buckets."""
  lengths = np.random.default_rng(1).integers(1, max_len + 1, prompts)
  traced = []
  prefill = engine.prefill

  def counted(*args):  # runs once per trace of a jitted prefill
    traced.append(args[2].shape[1])
    return prefill(*args)

  engine.prefill = counted
  spec = variant("CSWA", 4)
  decoder = params.decoder(spec)
  start = time.perf_counter()
  for n in lengths:
    jax.block_until_ready(decoder.prefill([[5] * int(n)], max_new_tokens=64)[0])
  seconds = time.perf_counter() - start
  engine.prefill = prefill
  print(f"{prompts} prompt lengths in [1, {max_len}] ({len(set(lengths))} distinct), "
        f"{spec.name}: {len(traced)} prefill programs with the default buckets "
        f"({sorted(set(traced))}), {seconds:.0f} s for all prefills with their compilation; "
        f"without buckets, one per distinct length: {len(set(lengths))}")


def cache_table(config_name: str, dtype: str, seq_len: int, plt_window: int) -> None:
  """Bytes by part: the originals' (PLT: loop 0's) K/V, the window's, and the rest (slot and
  position indices; PLT: the last token's loop outputs)."""
  print(f"{'variant':<22} | {'unit':<9} | {'originals MiB':>13} | {'hidden window KiB':>17} | "
        f"{'other KiB':>9} | {'total / Vanilla':>15}")
  rows = [("Vanilla", "tokens"), ("PHD-2", "tokens"), ("PHD-16", "tokens"),
          ("PHD-SWA-3-16-inf", "tokens"), ("PHD-SWA-3-16-inf", "positions"),
          ("PHD-CSWA-3-16-32", "tokens"), ("PHD-CSWA-16-16-32", "positions"),
          (f"PLT-2-{plt_window}", "tokens"), (f"PLT-16-{plt_window}", "tokens")]
  vanilla_bytes = None
  for name, unit in rows:
    config = load_config(config_name, dtype, name)
    config.phd.window_unit = unit
    got = decode.kv_cache_bytes(config, seq_len, 1)
    vanilla_bytes = vanilla_bytes or got["total"]
    print(f"{got['variant']:<22} | {unit:<9} | {got['originals'] / 2**20:>13.2f} | "
          f"{got['hidden_window'] / 2**10:>17.1f} | {got['bookkeeping'] / 2**10:>9.1f} | "
          f"{got['total'] / vanilla_bytes:>15.4f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", default="prefill,decode,compile,cache")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--prefill_config", default="tiny", help="a file in configs/")
  parser.add_argument("--prefill_ks", type=ints, default=[2, 4, 8, 16])
  parser.add_argument("--prompt_len", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=10,
                      help="timed prefills per cell (the paper's SWA prefill: a fifth)")
  parser.add_argument("--decode_config", default="tiny", help="a file in configs/")
  parser.add_argument("--decode_ks", type=ints, default=[2, 4, 16, 64, 256])
  parser.add_argument("--batches", type=ints, default=[1, 8, 32])
  parser.add_argument("--context", type=int, default=512, help="tokens already cached")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per cell")
  parser.add_argument("--compile_prompts", type=int, default=100)
  parser.add_argument("--cache_seq_len", type=int, default=4096)
  parser.add_argument("--cache_config", default="olmo2_151m", help="a file in configs/")
  parser.add_argument("--plt_window", type=int, default=WINDOW,
                      help="W of the PLT-K-W rows (0: PLT-K, no local window)")
  args = parser.parse_args()
  if args.plt_window < 0:
    parser.error(f"--plt_window must be >= 0; got {args.plt_window}")
  parts = args.parts.split(",")
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, dtype {args.dtype}, "
        f"attention {attention_lib.resolve('auto')}")

  if "prefill" in parts:
    params = SharedParams(load_config(args.prefill_config, args.dtype))
    print(f"\nprefill of one {args.prompt_len}-token prompt: configs/{args.prefill_config}"
          f".py, {params.count / 1e6:.1f}M parameters")
    prefill_table(params, args.prefill_ks, args.prompt_len, args.repeats, args.plt_window)
  if "decode" in parts:
    params = SharedParams(load_config(args.decode_config, args.dtype))
    print(f"\ndecode step with {args.context} tokens cached: configs/{args.decode_config}.py, "
          f"{params.count / 1e6:.1f}M parameters; ratio = step time / Vanilla's")
    decode_table(params, args.decode_config, args.dtype, args.decode_ks, args.batches,
                 args.context, args.steps, args.plt_window)
  if "compile" in parts:
    params = SharedParams(load_config(args.prefill_config, args.dtype))
    print(f"\ncompiled prefill programs: configs/{args.prefill_config}.py")
    compile_table(params, args.compile_prompts, args.prompt_len)
  if "cache" in parts:
    print(f"\nKV cache, {args.cache_seq_len} tokens, batch 1, configs/{args.cache_config}.py, "
          f"{args.dtype}")
    cache_table(args.cache_config, args.dtype, args.cache_seq_len, args.plt_window)


if __name__ == "__main__":
  main()
