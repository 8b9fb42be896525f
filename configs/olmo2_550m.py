"""The paper's 550M model (Table 2 and the ablations), OLMo2 architecture.

  python -m phd_jax.main --config=configs/olmo2_550m.py:PHD-SWA-3-16-inf --workdir=gs://BUCKET/phd_550m

From the paper: 16 layers, d_model 1536, FFN 4096 per projection (8192 quoted for gate+up),
16 query / 4 kv heads of dim 96, 300B tokens, variants Vanilla and PHD-SWA-{2,3,5}-16-∞.
Parameters: 550,977,024 with vocabulary 50304. Paper results: loss 2.782 (Vanilla),
2.753 / 2.739 / 2.725 (K = 2 / 3 / 5); 7-task average 49.3 / 50.1 / 50.2 / 51.1.
Ours: seq_len 4096, batch 512 sequences (2M tokens), 143,051 steps = 300B tokens, peak lr
6e-4, cosine to 10%, AdamW (0.9, 0.95, 1e-8), weight decay 0.1, bfloat16 compute, FSDP.
"""

from configs import base


def get_config(variant=None):
  c = base.get_config(variant or "PHD-SWA-2-16-inf")
  c.model.vocab_size = 50304
  c.model.d_model = 1536
  c.model.num_layers = 16
  c.model.num_heads = 16
  c.model.num_kv_heads = 4
  c.model.head_dim = 96
  c.model.mlp_dim = 4096
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.seq_len = 4096
  c.batch_size = 512
  c.num_steps = 143_051
  c.optim.lr = 6e-4
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.data.source = "tfds"
  c.data.tokenizer = "hf"
  return c
