"""The paper's variant comparison at CPU scale: every variant sees the same original tokens.

  python -m phd_jax.sweep --config=configs/repro.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-2-4-8,PHD-CSWA-3-4-8,Vanilla@num_steps=1200

Byte-level tokens of the embedded corpus (the standard library). All values are ours: a
4-layer width-64 decoder (~0.25M parameters) trained on 1.6M tokens (400 steps of 32 x 128),
about 6.5 tokens per parameter. The paper's W = 16, C = 32 at 4096-token sequences would
scale to W < 1 at 128 tokens; we keep its 1:2 window:chunk ratio with W = 4, C = 8 (16
chunks per sequence) -- the window the paper's ablation finds carries most of the gain.
"Vanilla@num_steps=1200" is the compute-matched baseline: the training FLOPs of K = 3.
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
  return c
