"""The paper's variant comparison at CPU scale: every variant sees the same original tokens.

  python -m phd_jax.sweep --config=configs/repro.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-2-4-8,PHD-CSWA-3-4-8,Vanilla@num_steps=1200

Byte-level tokens of the embedded corpus (the standard library). All values are ours: a
4-layer width-64 decoder (~0.25M parameters) trained on 1.6M tokens (400 steps of 32 x 128),
about 6.5 tokens per parameter. The paper's W = 16, C = 32 at 4096-token sequences would
scale to W < 1 at 128 tokens; we keep its 1:2 window:chunk ratio with W = 4, C = 8 (16
chunks per sequence) -- the window the paper's ablation finds carries most of the gain.
"Vanilla@num_steps=1200" is the compute-matched baseline: the training FLOPs of K = 3.

When does PHD pay? (c) The inference frontier: PHD-CSWA-3's training FLOPs spent on a
bigger Vanilla instead, on the same 1.64M tokens: deeper (12 layers, 0.64M parameters),
wider (width 112, 4 heads of 28, MLP 336; 0.69M) and both (8 layers of width 80, 4 heads
of 20, MLP 240; 0.68M), each within 2.1% of PHD-CSWA-3's 7.06 training TFLOPs.
`compare` sets held-out loss against inference memory at a 2048-token context and against
decode FLOPs per token: PHD keeps the small model's parameters and KV cache.

  python -m phd_jax.sweep --config=configs/repro.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-3-4-8,Vanilla@model.num_layers=12,\
Vanilla@model.d_model=112@model.head_dim=28@model.mlp_dim=336,\
Vanilla@model.num_layers=8@model.d_model=80@model.head_dim=20@model.mlp_dim=240
  python -m phd_jax.compare DIR --output_dir=docs --name=frontier \
      --x=train_flops,inference_memory,decode_flops

Parallel copies or parallel loops? PLT-2-4 and PLT-3-4 (the same 4 blocks run 2 and 3
times; loop 0's KV cache only; a 4-token window within each later loop, like PHD's W = 4)
against PHD-CSWA-2 and -3 at the same original tokens. PLT variants take the released
checkpoint's cross-loop settings (`defaults.released_plt_settings`), chosen before these
runs: with the configuration class's a = b = 1 a small PLT learned far more slowly in a
40-step check.

  python -m phd_jax.sweep --config=configs/repro.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-2-4-8,PHD-CSWA-3-4-8,PLT-2-4,PLT-3-4
  python -m phd_jax.compare DIR --output_dir=docs --name=loops_repro
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant)
  c.model.vocab_size = 384  # 256 bytes + special tokens, padded to a multiple of 128
  c.model.d_model = 64
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 16
  c.model.mlp_dim = 192
  c.model.rope_theta = 10_000.0
  c.seq_len = 128
  c.batch_size = 32
  c.num_steps = 400
  c.log_every = 20
  c.eval_every = 100
  c.eval_batches = 32  # 131k held-out tokens, 17% of the validation split
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.1
  c.checkpoint.every = 100
  c.data.source = "stdlib"
  return defaults.released_plt_settings(c)
