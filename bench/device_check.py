"""Accelerator verification in one command: exactness, training speed and MFU, inference.

  python bench/device_check.py --out DIR            # GPU/TPU, <= 420 s
  python bench/device_check.py --smoke --out DIR    # CPU, tiny shapes, seconds

Parts, in order, each row written to DIR/device_check.{json,md} as soon as it is measured:
1. exactness: the backend's fused attention (`cudnn` on CUDA GPUs, `splash` on TPU; on CPU
   the same split/merge code around the plain-JAX `XlaCausal` kernel) against `structured`,
   outputs and gradients of q, k and v, bfloat16, T = 2048, for Vanilla, PHD-2,
   PHD-SWA-3-16-inf and PHD-CSWA-3-16-32 on packed documents, and PHD-CSWA-3-16-32 unpacked.
   Tolerance as in tests/test_attention.py: |fused - exact| <= 2 |bf16 ref - exact| + 1e-2,
   exact = structured on the same (rounded) inputs in float32, ref = structured in bfloat16.
   Then the kernel's log-sum-exp convention (natural log of the sum over the scaled,
   masked scores, float32, [B, T, N]) that the log-sum-exp merge of split.py relies on.
2. training: the trainer's jitted step (forward, backward, AdamW) of configs/olmo2_151m.py
   and configs/olmo2_1b.py (bfloat16, their full remat) on random packed batches, for
   Vanilla, PHD-CSWA-2-16-32, PHD-CSWA-3-16-32 and PLT-3-16 (3 loops: PHD-3's compute in
   depth), attention `auto` then `structured`:
   median step time after warm-up steps, tokens/s, MFU from the K-aware FLOP count the
   trainer logs, and each step's ratio to K x the Vanilla step of the same model and impl.
3. inference (configs/olmo2_550m.py, the paper's latency model): decode ms per token at
   batch 1 with a 2048-token context for K = 1, 2, 4, 16, 64, 256 (PHD-CSWA-K-16-32, then
   PHD-K), ratio to Vanilla (paper, A100: <= ~1.2x at K = 256); prefill of one 2048-token
   prompt at K = 16, PHD-SWA-16-16-inf and PHD-CSWA-16-16-32 against Vanilla (paper:
   x72.88 and x1.08).

`--budget_s` (default 420) bounds the whole run, counted from the start of this script
(harness.py): each part gets a share of the time left, a row that would not fit is skipped
and listed as such, timed loops stop early when the part's time runs out, and should an
estimate be wrong, a watchdog writes the report, naming the row it cut off, and exits
(status 3) when the budget is spent. A row that fails records its error and the run goes
on. Exit status: 0 all passed, 1 an exactness check or a row failed, 2 a row failed by a
bug (an ImportError, NameError, TypeError... in the bench or the package), 3 cut off.

On a machine whose image already holds jax (with its CUDA/TPU plugin), flax, optax,
orbax-checkpoint, etils and absl (versions may differ from requirements.txt), carry only
the pure-Python wheels of ml-collections (and PyYAML if missing), and put them and the
repository root (in place of installing the package) on the module path:
  pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0   # here
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl          # there
  PYTHONPATH=/tmp/site:. python bench/device_check.py --out $OUT
Batches are random tokens (speed does not depend on their values) and parameters are
random, so no tokenizer, corpus, grain, TensorFlow Datasets or TensorBoard is imported.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts the imports too

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import functools
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax import attention as attention_lib
from phd_jax import config as config_lib
from phd_jax import flops, train
from phd_jax.attention import cudnn, splash
from phd_jax.attention.split import XlaCausal, split_attention
from phd_jax.attention.structured import structured_attention
from phd_jax.masks import PHDSpec, parse_variant

import common  # siblings in bench/
from device_report import Report, markdown, outcome
from harness import Budget, RowRunner

EXACT_CASES = (("Vanilla", True), ("PHD-2", True), ("PHD-SWA-3-16-inf", True),
               ("PHD-CSWA-3-16-32", True), ("PHD-CSWA-3-16-32", False))  # (variant, packed)
TRAIN_VARIANTS = ("Vanilla", "PHD-CSWA-2-16-32", "PHD-CSWA-3-16-32", "PLT-3-16")  # [::2]: smoke
SHARES = {"exactness": 0.2, "training": 0.6, "inference": 1.0}  # of the time left
# First-of-a-kind cost guesses (s): device, smoke. Later rows use the measured ones.
PRIORS = {"exact": (20, 2), "lse": (10, 1), "train": (90, 6), "decode": (20, 2),
          "prefill": (30, 2)}
SMOKE_MODEL = dict(vocab_size=256, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                   head_dim=16, mlp_dim=64)


# ----------------------------------------------------------------------------------------
# 1. Exactness.


def fused_kernel():
  """(name, attention function, split.py kernel) of this backend's fused path."""
  impl = attention_lib.resolve("auto")
  if impl == "cudnn":
    return "cudnn", cudnn.cudnn_attention, cudnn.CudnnCausal()
  if impl == "splash":
    return "splash", splash.splash_attention, splash.SplashCausal()
  return "xla (split merge)", functools.partial(split_attention, XlaCausal()), XlaCausal()


def packing(batch: int, length: int, seed: int = 0):
  """Segment ids (0: trailing padding) and in-document positions of random documents."""
  rng = np.random.default_rng(seed)
  segment_ids = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for row in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, length - 1), 3, replace=False))
    bounds = [0, *cuts, length - length // 16]  # the last 1/16 is padding
    for doc, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
      segment_ids[row, a:b] = doc + 1
      positions[row, a:b] = np.arange(b - a)
  return jnp.asarray(segment_ids), jnp.asarray(positions)


def _outputs_and_grads(attend, spec, qkv, weights, segment_ids, positions):
  def loss(q, k, v):
    out = attend(q, k, v, spec, segment_ids, positions)
    return (out.astype(jnp.float32) * weights).sum(), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*qkv)
  return (out, *grads)


@jax.jit
def _max_error(a, b):
  return jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def exactness_row(variant: str, packed: bool, shape: dict, kernel_name: str, attend):
  spec = parse_variant(variant)
  B, T, H, G, Dh = (shape[n] for n in "BTHGD")
  keys = jax.random.split(jax.random.key(spec.k), 4)
  q = jax.random.normal(keys[0], (B, T, spec.k, H, Dh), jnp.bfloat16)
  k, v = (jax.random.normal(key, (B, T, spec.k, G, Dh), jnp.bfloat16) for key in keys[1:3])
  weights = jax.random.normal(keys[3], q.shape, jnp.float32)
  segment_ids, positions = packing(B, T) if packed else (None, None)
  if kernel_name == "cudnn" and not cudnn.cudnn_supports(q):
    raise ValueError(f"cuDNN does not take these inputs {q.shape} {q.dtype}")
  run = lambda fn, inputs: _outputs_and_grads(fn, spec, inputs, weights, segment_ids, positions)
  got = run(attend, (q, k, v))
  reference = run(structured_attention, (q, k, v))
  exact = run(structured_attention, [x.astype(jnp.float32) for x in (q, k, v)])
  names = ("output", "dq", "dk", "dv")
  errors = {n: float(_max_error(a, b)) for n, a, b in zip(names, got, exact)}
  bounds = {n: 2 * float(_max_error(r, b)) + 1e-2 for n, r, b in zip(names, reference, exact)}
  return {"variant": spec.name, "packed": packed, "kernel": kernel_name, "T": T,
          "errors": errors, "bounds": bounds,
          "ok": all(errors[n] <= bounds[n] for n in names)}


def lse_row(shape: dict, kernel_name: str, kernel):
  """The kernel's (output, log-sum-exp) against XlaCausal's explicit softmax."""
  B, T, H, G, Dh = (shape[n] for n in "BTHGD")
  keys = jax.random.split(jax.random.key(7), 3)
  q = jax.random.normal(keys[0], (B, T, H, Dh), jnp.bfloat16)
  k, v = (jax.random.normal(key, (B, T, G, Dh), jnp.bfloat16) for key in keys[1:])
  segment_ids, _ = packing(B, T, seed=1)
  got_o, got_lse = jax.jit(kernel.forward)(q, k, v, segment_ids)
  ref_o, ref_lse = jax.jit(XlaCausal().forward)(q, k, v, segment_ids)
  exact_o, exact_lse = jax.jit(XlaCausal().forward)(
      *[x.astype(jnp.float32) for x in (q, k, v)], segment_ids)
  row = {"kernel": kernel_name, "shape": list(got_lse.shape), "dtype": str(got_lse.dtype),
         "lse_error": float(_max_error(got_lse, exact_lse)),
         "lse_bound": 2 * float(_max_error(ref_lse, exact_lse)) + 1e-2,
         "output_error": float(_max_error(got_o, exact_o)),
         "output_bound": 2 * float(_max_error(ref_o, exact_o)) + 1e-2}
  row["ok"] = (row["shape"] == [B, T, H] and row["dtype"] == "float32"
               and row["lse_error"] <= row["lse_bound"]
               and row["output_error"] <= row["output_bound"])
  return row


def exactness_part(args, runner: RowRunner):
  kernel_name, attend, kernel = fused_kernel()
  cfg = config_lib.model_config(load_config(args, "olmo2_151m", "Vanilla"))
  shape = dict(B=2, T=args.exact_len, H=cfg.num_heads, G=cfg.num_kv_heads, D=cfg.head_dim)
  for variant, packed in args.exact_cases:
    row = runner.row("exactness", f"{variant}{'' if packed else ' unpacked'}", "exact",
                     lambda: exactness_row(variant, packed, shape, kernel_name, attend),
                     scale=parse_variant(variant).k)
    if row:
      runner.report.add("exactness", row)
  row = runner.row("exactness", "log-sum-exp", "lse", lambda: lse_row(shape, kernel_name, kernel))
  if row:
    runner.report.add("lse", row)


# ----------------------------------------------------------------------------------------
# 2. Training speed.


def load_config(args, name: str, variant: str):
  """configs/NAME.py with synthetic data (no tokenizer, no corpus); tiny under --smoke."""
  c = common.load_config(name, variant)
  c.num_steps = 1000
  c.optim.warmup_steps = 10
  if args.smoke:
    c.model.update(SMOKE_MODEL)
  return c


def random_batch(config, seed: int = 0) -> dict:
  """This process's rows of a packed batch of random tokens."""
  rows = config.batch_size // jax.process_count()
  tokens = np.random.default_rng(seed).integers(3, config.model.vocab_size,
                                                (rows, config.seq_len), dtype=np.int32)
  segment_ids, positions = packing(rows, config.seq_len, seed)
  return {"tokens": tokens, "segment_ids": np.asarray(segment_ids),
          "positions": np.asarray(positions)}


def train_row(args, model: str, variant: str, impl: str, budget: Budget) -> dict:
  config = load_config(args, model, variant)
  config.model.attention_impl = impl
  config.update(batch_size=args.train_batch[model], seq_len=args.train_len)
  config_lib.validate(config)
  training = train.setup(config)
  batch = training.global_batch(random_batch(config))
  holder = {"state": training.init()}

  def one_step():
    holder["state"], metrics = training.step(holder["state"], batch)
    return metrics

  begin = time.perf_counter()
  metrics = jax.block_until_ready(one_step())
  first_s = time.perf_counter() - begin
  seconds = budget.timed(one_step, args.warmup, args.steps)
  spec, cfg = config_lib.phd_spec(config), config_lib.model_config(config)
  step_s = statistics.median(seconds)
  step_flops = config.batch_size * flops.flops_per_sequence(cfg, spec, config.seq_len)
  devices = jax.devices()
  peak = flops.peak_flops(devices[0].device_kind)
  return {"model": model, "variant": spec.name, "k": spec.k, "impl": impl,
          "resolved_impl": attention_lib.resolve(impl),
          "shape": f"{config.batch_size} x {config.seq_len}", "first_s": first_s,
          "steps": len(seconds), "step_ms": 1e3 * step_s,
          "tokens_per_s": config.batch_size * config.seq_len / step_s,
          "flops_per_step": step_flops, "tflops_per_s": step_flops / step_s / 1e12,
          "mfu": step_flops / step_s / (peak * len(devices)) if peak else None,
          "loss": float(metrics["loss"])}


def training_part(args, runner: RowRunner):
  impls = ["auto"]
  if attention_lib.resolve("auto") != "structured":  # on CPU, auto is structured
    impls.append("structured")
  vanilla = {}
  for impl in impls:
    for model in args.train_models:
      for variant in args.train_variants:
        k = parse_variant(variant).k
        row = runner.row("training", f"{model} {variant} {impl}", f"train {model}",
                         lambda: train_row(args, model, variant, impl, runner.budget), scale=k)
        if row is None:
          continue
        if k == 1:
          vanilla[model, impl] = row["step_ms"]
        base = vanilla.get((model, impl))
        row["ratio_to_k_vanilla"] = row["step_ms"] / (k * base) if base else None
        runner.report.add("training", row)


# ----------------------------------------------------------------------------------------
# 3. Inference.


def decode_ms(params: common.SharedParams, spec: PHDSpec, args, budget: Budget) -> float:
  """Median ms of one decoding step at batch 1 with `args.context` tokens cached."""
  step = common.decode_step(params, spec, 1, args.context, 1 + 2 * args.steps)
  return 1e3 * statistics.median(budget.timed(step, 1, 2 * args.steps))


def prefill_ms(params: common.SharedParams, spec: PHDSpec, args, budget: Budget) -> float:
  """Fastest ms of prefilling one `args.context`-token prompt (after a compiling call)."""
  decoder = params.decoder(spec)
  prompt = np.random.default_rng(0).integers(3, params.cfg.vocab_size, args.context).tolist()
  return 1e3 * min(budget.timed(lambda: decoder.prefill([prompt])[0], 1, args.steps))


def inference_part(args, runner: RowRunner):
  config = load_config(args, args.inference_model, "Vanilla")
  params = common.SharedParams(config)
  vanilla = {}
  specs = [("Vanilla", PHDSpec())]
  for kind in ("CSWA", "PHD"):
    for k in (k for k in args.decode_ks if k > 1):
      specs.append((kind, parse_variant(f"PHD-CSWA-{k}-16-32" if kind == "CSWA" else f"PHD-{k}")))
  for kind, spec in specs:
    ms = runner.row("inference", f"decode {spec.name}", "decode",
                    lambda: decode_ms(params, spec, args, runner.budget))
    if ms is not None:
      vanilla.setdefault("decode", ms)
      runner.report.add("decode", {"variant": spec.name, "k": spec.k, "context": args.context,
                                   "ms": ms, "ratio": ms / vanilla["decode"]})
  for spec in (PHDSpec(), parse_variant(f"PHD-SWA-{args.prefill_k}-16-inf"),
               parse_variant(f"PHD-CSWA-{args.prefill_k}-16-32")):
    ms = runner.row("inference", f"prefill {spec.name}", "prefill",
                    lambda: prefill_ms(params, spec, args, runner.budget), scale=spec.k)
    if ms is not None:
      vanilla.setdefault("prefill", ms)
      runner.report.add("prefill", {"variant": spec.name, "k": spec.k, "prompt": args.context,
                                    "ms": ms, "ratio": ms / vanilla["prefill"]})


# ----------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="directory for device_check.{json,md}")
  p.add_argument("--budget_s", type=float, default=420.0, help="the whole run, imports included")
  p.add_argument("--smoke", action="store_true", help="CPU-sized shapes: every part in seconds")
  p.add_argument("--parts", default="exactness,training,inference")
  p.add_argument("--steps", type=int, default=None, help="timed steps per row")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling")
  args = p.parse_args(argv)
  parts = [x for x in args.parts.split(",") if x]
  unknown = sorted(set(parts) - set(SHARES))
  if unknown:
    p.error(f"--parts: unknown {unknown}; choose from {sorted(SHARES)}")
  if args.budget_s <= 0:
    p.error(f"--budget_s must be positive; got {args.budget_s}")
  args.parts = parts
  small = args.smoke
  args.steps = args.steps or (2 if small else 10)
  args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
  args.exact_len = 128 if small else 2048
  args.train_len = 128 if small else 4096
  # --smoke: one case, model and PHD variant of each kind (the code paths are the same)
  args.exact_cases = EXACT_CASES[3:4] if small else EXACT_CASES
  args.train_models = ("olmo2_151m",) if small else ("olmo2_151m", "olmo2_1b")
  args.train_variants = TRAIN_VARIANTS[::2] if small else TRAIN_VARIANTS
  args.train_batch = {"olmo2_151m": 2 if small else 8, "olmo2_1b": 2 if small else 4}
  args.inference_model = "olmo2_550m"
  args.context = 64 if small else 2048
  args.decode_ks = (1, 4) if small else (1, 2, 4, 16, 64, 256)
  args.prefill_k = 4 if small else 16
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  devices = jax.devices()
  import flax  # pylint: disable=import-outside-toplevel
  meta = {"device": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
          "date": time.strftime("%Y-%m-%d %H:%M"), "jax": jax.__version__,
          "flax": flax.__version__, "auto": attention_lib.resolve("auto"),
          "budget_s": args.budget_s, "smoke": args.smoke, "argv": sys.argv[1:]}
  budget = Budget(args.budget_s, START, {kind: p[args.smoke] for kind, p in PRIORS.items()})
  report = Report(args.out, meta, START)
  runner = RowRunner(budget, report, START)
  timer = runner.start_watchdog()
  parts = {"exactness": exactness_part, "training": training_part,
           "inference": inference_part}
  for name in SHARES:
    if name in args.parts:
      budget.start_part(SHARES[name])
      parts[name](args, runner)
  timer.cancel()
  status, code = outcome(report.data)
  report.finish(status)
  print(markdown(report.data))
  return code


if __name__ == "__main__":
  sys.exit(main())
