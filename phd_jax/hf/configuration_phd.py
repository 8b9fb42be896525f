"""Configuration of `PhdForCausalLM`, the PyTorch PHD-Transformer for transformers users.

Written into every exported PHD checkpoint next to `modeling_phd.py` (config.json's
`auto_map` names both), so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
runs the PHD forward without phd_jax installed. The fields use transformers' usual names;
the PHD variant is `phd_k`, `phd_window`, `phd_chunk`, `phd_window_unit`, `phd_positions`
(phd_jax's `PHDSpec`); a PLT variant (`PLTSpec`, `modeling_plt.py`) is `plt_num_loops` > 1
with `plt_window`, `plt_gate_use_hidden_states`, `plt_emb_scale`, `plt_hidden_scale`,
`plt_normalize_per_loop`, named as in the released PLT model's configuration except the
window: `plt_window` is one count of tokens, the query's own included, where the release's
`plt_window_size` is a (left, right) pair. This file imports nothing of phd_jax.
"""

from transformers import PretrainedConfig


class PhdConfig(PretrainedConfig):
  model_type = "phd"

  def __init__(self, vocab_size=50304, hidden_size=2048, intermediate_size=8192,
               num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
               rope_theta=500_000.0, rms_norm_eps=1e-6, norm_style="reordered", qk_norm=True,
               qk_norm_per_head=False, tie_word_embeddings=False, max_position_embeddings=4096,
               initializer_range=0.02, phd_k=1, phd_window=0, phd_chunk=None,
               phd_window_unit="tokens", phd_positions="shared", plt_num_loops=1, plt_window=0,
               plt_gate_use_hidden_states=False, plt_emb_scale=1.0, plt_hidden_scale=1.0,
               plt_normalize_per_loop=True, **kwargs):
    if norm_style not in ("reordered", "pre"):
      raise ValueError(f"norm_style must be 'reordered' (OLMo2) or 'pre' (Llama); got "
                       f"{norm_style!r}")
    if phd_window_unit not in ("tokens", "positions"):
      raise ValueError(f"phd_window_unit must be 'tokens' or 'positions'; got "
                       f"{phd_window_unit!r}")
    if phd_positions not in ("shared", "expanded"):
      raise ValueError(f"phd_positions must be 'shared' or 'expanded'; got {phd_positions!r}")
    if plt_num_loops > 1 and phd_k > 1:
      raise ValueError(f"plt_num_loops={plt_num_loops} and phd_k={phd_k}: a model is PHD or "
                       "PLT, not both")
    if plt_window and plt_num_loops == 1:
      raise ValueError(f"plt_window={plt_window} needs later loops (plt_num_loops > 1)")
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.intermediate_size = intermediate_size  # each of the gate and up projections
    self.num_hidden_layers = num_hidden_layers
    self.num_attention_heads = num_attention_heads
    self.num_key_value_heads = num_key_value_heads
    self.head_dim = head_dim
    self.rope_theta = rope_theta
    self.rms_norm_eps = rms_norm_eps
    self.norm_style = norm_style  # "reordered": x + norm(f(x)); "pre": x + f(norm(x))
    self.qk_norm = qk_norm
    self.qk_norm_per_head = qk_norm_per_head  # Qwen3; OLMo2 norms q and k across all heads
    self.max_position_embeddings = max_position_embeddings
    self.initializer_range = initializer_range
    self.phd_k = phd_k  # copies per token (1 = vanilla)
    self.phd_window = phd_window  # sliding window over hidden copies (0 = none)
    self.phd_chunk = phd_chunk  # CSWA chunk length in tokens (None = no chunks)
    self.phd_window_unit = phd_window_unit
    self.phd_positions = phd_positions
    self.plt_num_loops = plt_num_loops  # runs of every token through the layers (1 = not PLT)
    self.plt_window = plt_window  # local window of loops >= 1 in tokens (0 = no local part)
    self.plt_gate_use_hidden_states = plt_gate_use_hidden_states  # else the gate reads q
    self.plt_emb_scale = plt_emb_scale  # a of a later loop's input a*E(t) + b*H(t-1)
    self.plt_hidden_scale = plt_hidden_scale  # b
    self.plt_normalize_per_loop = plt_normalize_per_loop  # H after the final norm
    super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
