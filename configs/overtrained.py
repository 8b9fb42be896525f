"""When does PHD pay? (b) The over-trained regime: a tiny model on many tokens per parameter.

  python -m phd_jax.sweep --config=configs/overtrained.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,PHD-CSWA-3-4-8,Vanilla@num_steps=1600,Vanilla@num_steps=2100
  python -m phd_jax.compare DIR --output_dir=docs --name=overtrained

The paper trains 1.2B models on 500B tokens (over 400 tokens per parameter), where more
data helps least and repeating tokens is meant to pay; configs/repro.py sits at 6.5. This
is configs/repro.py shrunk 13x to 18,560 parameters (width 16, 2 layers, 2 heads of 8 with
one KV head, MLP 48; the 384 x 16 embedding and output hold two thirds of them) and
trained on 2.87M fresh tokens (700 steps of 32 x 128): 155 tokens per parameter, the most
that leaves room for 3x the tokens on fresh data too. At this size the output layer, which
runs once per token whatever K, holds most of the FLOPs, so PHD-CSWA-3 costs 2.29x a
Vanilla step, not 3x: `Vanilla@num_steps=1600` spends PHD-CSWA-3's training FLOPs (0.645T)
on 2.29x the tokens, and `Vanilla@num_steps=2100` spends 1.31x them on 3x the tokens (8.6M
of the train split's 11.3M, so no token is seen twice). Window and chunk as in
configs/repro.py (W = 4, C = 8 at T = 128). All values are ours.
"""

import os

from phd_jax import config as config_lib


def get_config(variant=None):
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "repro.py"), variant)
  c.model.d_model = 16
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.num_kv_heads = 1
  c.model.head_dim = 8
  c.model.mlp_dim = 48
  c.num_steps = 700
  c.checkpoint.every = 350
  c.eval_every = 350
  return c
