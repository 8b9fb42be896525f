"""Can the hidden copies carry serial computation? A pointer-chasing task.

  python -m phd_jax.sweep --config=configs/mechanism.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,Vanilla@model.num_layers=2,PHD-2,PHD-3,PHD-CSWA-3-4-8,PHD-4,\
Vanilla@model.num_layers=3
  python -m phd_jax.eval.chase DIR/*/seed* --batches=32

Each answer is f(x) for a permutation f of 8 symbols listed in the same row
(`data/pointer_chase.py`, the "marked" table: values have ids of their own). The exact
lookup is two attention steps one after the other (mark each symbol with its predecessor,
then look it up: an induction head), yet 1-layer models answer well above chance (README,
"The mechanism"), which `phd_jax.eval.chase`'s two controls help to locate.
The 1-layer model is the base: Vanilla with 2 and 3 layers spends 2x and 3x its compute
per token in depth, PHD-K spends it in K copies of every token. Pre-norm without QK-norm:
with the OLMo2 norms a 2-layer Vanilla was still at chance after 1,500 steps.
All values are ours.

Loops against copies: PLT-2-4 and PLT-3-4 run the 1-layer block 2 and 3 times (a later
loop reads the previous loop's output of the previous token, so loops add serial steps
that copies do not), beside PHD-CSWA-2/-3 and the deeper Vanillas; PLT variants take the
released checkpoint's cross-loop settings (`defaults.released_plt_settings`).

  python -m phd_jax.sweep --config=configs/mechanism.py --workdir=DIR --seeds=0,1 \
      --variants=Vanilla,Vanilla@model.num_layers=2,Vanilla@model.num_layers=3,\
PHD-CSWA-2-4-8,PHD-CSWA-3-4-8,PLT-2-4,PLT-3-4
  python -m phd_jax.eval.chase DIR/*/seed* --batches=32
  python -m phd_jax.compare DIR --output_dir=docs --name=loops_mechanism
"""

from phd_jax import defaults


def get_config(variant=None):
  c = defaults.get_config(variant)
  c.model.vocab_size = 32  # 3 special ids, 8 keys, 8 values, the separator
  c.model.norm_style = "pre"
  c.model.qk_norm = False
  c.model.d_model = 64
  c.model.num_layers = 1
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 16
  c.model.mlp_dim = 192
  c.model.rope_theta = 10_000.0
  c.seq_len = 64  # BOS, a table of 8 pairs, a separator, 23 queries
  c.batch_size = 32
  c.num_steps = 3000
  c.log_every = 50
  c.eval_every = 500
  c.eval_batches = 16
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.1
  c.checkpoint.every = 500
  c.data.source = "pointer_chase"
  c.data.chase_nodes = 8
  c.data.chase_hops = 1
  c.data.chase_table = "marked"
  return defaults.released_plt_settings(c)
