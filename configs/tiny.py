"""A small model that trains on a laptop CPU in minutes: the default of `make train`.

  python -m phd_jax.main --config=configs/tiny.py --workdir=workdirs/tiny
  python -m phd_jax.main --config=configs/tiny.py:PHD-CSWA-2-4-8 --workdir=workdirs/tiny_phd

All values are ours (the paper has no model this small): byte-level tokens, 4 layers of
width 128, 256-token sequences, 300 steps (about 5 minutes on 2 CPU cores).
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant)
  c.model.vocab_size = 384  # 256 bytes + special tokens, padded to a multiple of 128
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 384
  c.model.rope_theta = 10_000.0
  c.seq_len = 256
  c.batch_size = 16
  c.num_steps = 300
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 4
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.1
  c.checkpoint.every = 100
  c.data.source = "stdlib"
  return c
