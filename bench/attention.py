"""PHD attention against vanilla causal attention: forward+backward time and peak memory.

  python bench/attention.py                       # CPU-sized defaults (a few minutes)
  python bench/attention.py --seq_lens=512,1024,2048,4096 --ks=1,2,3,4 --windows=0,16 \\
      --chunks=inf,32 --impls=auto --heads=16 --kv_heads=4 --head_dim=96 --dtype=bfloat16
  python bench/attention.py --no-attention --model_seq_len=2048   # only the model table

Table 1, per sequence length T: vanilla causal attention, then every variant x
implementation. Each time is one jitted forward+backward (gradients of q, k and v), the best
of --repeats runs measured side by side in this process. `x van` is the ratio to the fastest
vanilla row (marked *) and `/K` that ratio over K (target for `structured` at T = 2048:
<= 1.0, memory <= 1.1). Vanilla rows: JAX's `dot_product_attention` with is_causal (XLA;
cuDNN too on GPU in 16-bit) and every implementation at K = 1 (`structured` there skips
the tiles above the diagonal, which XLA's computes). Memory is the compiled peak from XLA's
memory analysis, as a ratio to the same vanilla row.

Table 2: one model forward+backward (loss and parameter gradients through
`nnx.value_and_grad`) of PHD-CSWA-K-16-32 against Vanilla, same model and tokens; target
`/K` <= 1.15 (K times the FLOPs is the physical limit).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from phd_jax import attention
from phd_jax.loss import next_token_loss
from phd_jax.masks import PHDSpec
from phd_jax.model import ModelConfig, Transformer

from common import ints, seconds_in_turns  # a sibling in bench/


def _chunks(text):
  return [None if x in ("inf", "∞") else int(x) for x in text.split(",") if x]


def peak_bytes(compiled) -> int:
  stats = compiled.memory_analysis()  # XLA:CPU's peak field leaves out temporaries
  return max(stats.peak_memory_in_bytes,
             stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def measure(cases, repeats: int):
  """[(seconds, peak bytes)] of jitted `fn(*args)` for each (fn, args) in `cases`: the
  fastest of `repeats` calls, taken in turns with the other cases'."""
  compiled = [jax.jit(fn).lower(*args).compile() for fn, args in cases]
  seconds = seconds_in_turns({i: functools.partial(c, *args)
                              for i, (c, (_, args)) in enumerate(zip(compiled, cases))}, repeats)
  return [(min(seconds[i]), peak_bytes(c)) for i, c in enumerate(compiled)]


def forward_backward(attend):
  """Gradients of <attend(q, k, v), cotangent> with respect to q, k and v."""
  def fn(q, k, v, cotangent):
    return jax.grad(lambda q, k, v: (attend(q, k, v).astype(jnp.float32) * cotangent).sum(),
                    argnums=(0, 1, 2))(q, k, v)
  return fn


def specs(ks, windows, chunks):
  """Distinct PHD variants of the grid (K = 1 is Vanilla; chunks need a window)."""
  seen = []
  for k in ks:
    for w in windows if k > 1 else [0]:
      for c in chunks if w > 0 else [None]:
        spec = PHDSpec(k=k, window=w, chunk=c)
        if spec not in seen:
          seen.append(spec)
  return seen


def vanilla_rows(dtype):
  """Vanilla causal attention from JAX itself: XLA everywhere, cuDNN too on GPU (16-bit)."""
  rows = [("xla dpa", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))]
  if jax.default_backend() == "gpu" and dtype != jnp.float32:
    rows.append(("cudnn dpa", lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn")))
  return rows


def attention_rows(args):
  dtype = jnp.dtype(args.dtype)
  H, G, Dh, B = args.heads, args.kv_heads, args.head_dim, args.batch
  impls = [attention.resolve(i) if i == "auto" else i for i in args.impls.split(",")]
  print(f"\nAttention forward+backward, B={B} H={H} G={G} Dh={Dh} {args.dtype}, "
        f"backend {jax.default_backend()}; ratios against the fastest vanilla row (*)")
  header = (f"{'T':>5} {'variant':<18} {'impl':<10} {'ms':>9} {'x van':>6} {'/K':>5} "
            f"{'MiB':>8} {'x van':>6}")
  print(header + "\n" + "-" * len(header))
  for T in ints(args.seq_lens):
    key = jax.random.split(jax.random.key(T), 4)
    q = jax.random.normal(key[0], (B, T, H, Dh), dtype)
    kv = [jax.random.normal(k, (B, T, G, Dh), dtype) for k in key[1:3]]
    rows, cases = [], []  # (variant, impl, k) and (fn, args) of each row
    for name, fn in vanilla_rows(dtype):
      rows.append(("vanilla causal", name, 1))
      cases.append((forward_backward(fn), (q, *kv, q)))
    for spec in specs(ints(args.ks), ints(args.windows), _chunks(args.chunks)):
      qkv = [jnp.broadcast_to(x[:, :, None], (B, T, spec.k, *x.shape[2:])) for x in (q, *kv)]
      cotangent = jax.random.normal(key[3], qkv[0].shape, jnp.float32)
      for impl in impls:
        if impl == "dense" and spec.k * T > args.dense_max_len:
          continue
        fn = attention.IMPLEMENTATIONS[impl]
        attend = lambda q, k, v, fn=fn, spec=spec: fn(q, k, v, spec)
        rows.append((spec.name, impl, spec.k))
        cases.append((forward_backward(attend), (*qkv, cotangent)))
    rows = [row + result for row, result in zip(rows, measure(cases, args.repeats))]
    base = min((r for r in rows if r[2] == 1), key=lambda r: r[3])
    for variant, impl, k, s, mem in rows:
      mark = "*" if (variant, impl) == base[:2] else " "
      print(f"{T:>5} {variant:<18} {impl:<10}{mark} {s * 1e3:>8.1f} {s / base[3]:>6.2f} "
            f"{s / base[3] / k:>5.2f} {mem / 2**20:>8.1f} {mem / base[4]:>6.2f}", flush=True)


def model_rows(args):
  T, B = args.model_seq_len, args.batch
  cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                    num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                    mlp_dim=4 * args.d_model, dtype=args.dtype,
                    attention_impl=args.impls.split(",")[0])
  tokens = jax.random.randint(jax.random.key(0), (B, T), 0, args.vocab)
  print(f"\nModel forward+backward, {args.layers} layers d={args.d_model} T={T} B={B} "
        f"{args.dtype}, attention_impl={cfg.attention_impl} -> "
        f"{attention.resolve(cfg.attention_impl)}")
  header = f"{'variant':<20} {'ms':>9} {'x van':>6} {'/K':>5} {'MiB':>8} {'x van':>6}"
  print(header + "\n" + "-" * len(header))
  specs_ = [PHDSpec(k=1)] + [PHDSpec(k=k, window=16, chunk=32) for k in ints(args.ks) if k > 1]
  cases = []
  for spec in specs_:
    graphdef, state = nnx.split(Transformer(cfg, spec, rngs=nnx.Rngs(0)))

    def loss_and_grads(state, tokens, graphdef=graphdef):
      model = nnx.merge(graphdef, state)
      return nnx.value_and_grad(lambda m: next_token_loss(m(tokens), tokens)[0])(model)

    cases.append((loss_and_grads, (state, tokens)))
  results = measure(cases, args.repeats)
  base_s, base_mem = results[0]
  for spec, (s, mem) in zip(specs_, results):
    print(f"{spec.name:<20} {s * 1e3:>9.1f} {s / base_s:>6.2f} {s / base_s / spec.k:>5.2f} "
          f"{mem / 2**20:>8.1f} {mem / base_mem:>6.2f}", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seq_lens", default="512,1024,2048")
  p.add_argument("--ks", default="1,2,3,4")
  p.add_argument("--windows", default="0,16")
  p.add_argument("--chunks", default="inf,32")
  p.add_argument("--impls", default="auto,dense", help="comma list; auto = this backend's")
  p.add_argument("--dense_max_len", type=int, default=2048, help="skip dense above K*T")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--model", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--model_seq_len", type=int, default=512)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--vocab", type=int, default=4096)
  args = p.parse_args(argv)
  if args.attention:
    attention_rows(args)
  if args.model:
    model_rows(args)


if __name__ == "__main__":
  main()
