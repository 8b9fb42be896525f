"""The paper's 151M pilot size (its shape is not given; this one is ours).

  python -m phd_jax.main --config=configs/olmo2_151m.py:PHD-CSWA-2-16-32 --workdir=gs://BUCKET/phd_151m

Ours: 12 layers, d_model 768, 12 query / 4 kv heads of dim 64, FFN 2048 per projection,
untied, vocabulary 50304: 152,795,904 parameters, the closest round OLMo2-style shape to
the paper's 151M. The paper trains it on 100B tokens: seq_len 4096, batch 256 sequences
(1M tokens), 95,367 steps, peak lr 1e-3 (ours), cosine to 10%, bfloat16 compute.
"""

from configs import base


def get_config(variant=None):
  c = base.get_config(variant or "PHD-CSWA-2-16-32")
  c.model.vocab_size = 50304
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.num_kv_heads = 4
  c.model.head_dim = 64
  c.model.mlp_dim = 2048
  c.model.dtype = "bfloat16"
  c.seq_len = 4096
  c.batch_size = 256
  c.num_steps = 95_367
  c.optim.lr = 1e-3
  c.data.source = "tfds"
  c.data.tokenizer = "hf"
  return c
