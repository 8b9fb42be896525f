"""The PHD-Transformer (Parallel Hidden Decoding) in PyTorch, for transformers users.

A reference forward over weights exported by `python -m phd_jax.convert to_hf`: every
variant of phd_jax (Vanilla, PHD-K, PHD-SWA, PHD-CSWA, both window units, both position
modes) through one explicit boolean mask, so it costs (K*T)^2 attention and keeps no KV
cache. It exists so that any tool taking a transformers causal LM (lm-eval's `hf` backend,
perplexity scripts, `generate`) can score a phd_jax checkpoint:

  model = AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)

Each of the T tokens is repeated K times in place; row `p*K + a` of the interleaved
sequence is copy `a` of token `p` (copy 0 the original, copies 1..K-1 the hidden decoding
tokens: the same embedding through the same weights). Query copy a of token p may see key
copy b of token q iff (phd_jax/masks.py, 0-based copies):
  R1  b == 0 and q < p;  R2  q == p and b <= a;
  SWA (hidden queries and keys, a, b > 0, q < p): 0 < dist <= window, where dist is the
      distance in the hidden stream ((p-q)*(K-1) + a-b, window_unit "tokens") or in tokens
      (p-q, "positions"); CSWA also needs pos(p) // chunk == pos(q) // chunk;
and nothing is visible across segments (`attention_mask` 0 marks padding). Positions are
in-document positions (from `position_ids`, else counted over `attention_mask`); RoPE
gives every copy pos(p) ("shared") or K*pos(p) + a ("expanded"). Only the last copy of each
token produces logits. Weight names and shapes are those of OLMo2 (norm_style
"reordered") or Llama/Qwen3 ("pre"). With `plt_num_loops` > 1 the model is a PLT variant
instead: the same layers run in loops (`modeling_plt.py`), and with a window every layer's
attention also holds the gate of the later loops (`PltGate`, named as in the released PLT
model: `self_attn.plt_gate.{weight,bias,gate_norm.weight}`). This file imports nothing of
phd_jax.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_phd import PhdConfig
from .modeling_plt import plt_hidden_states

# (norm after attention or before it, norm after the MLP or before it): checkpoint names.
NORM_NAMES = {"reordered": ("post_attention_layernorm", "post_feedforward_layernorm"),
              "pre": ("input_layernorm", "post_attention_layernorm")}


def phd_mask(config, segment_ids, positions):
  """Boolean `[B, T*K, T*K]` (True = may attend) over the interleaved copies."""
  K, B, T = config.phd_k, *segment_ids.shape
  idx = torch.arange(T * K, device=segment_ids.device)
  tok, copy = idx // K, idx % K
  q_tok, q_copy, k_tok, k_copy = tok[:, None], copy[:, None], tok[None, :], copy[None, :]
  allowed = ((k_copy == 0) & (k_tok < q_tok)) | ((k_tok == q_tok) & (k_copy <= q_copy))
  allowed = allowed[None].expand(B, -1, -1)
  if config.phd_window:
    if config.phd_window_unit == "tokens":
      dist = (q_tok - k_tok) * (K - 1) + (q_copy - k_copy)
    else:
      dist = q_tok - k_tok
    in_window = ((q_copy > 0) & (k_copy > 0) & (k_tok < q_tok) & (dist > 0)
                 & (dist <= config.phd_window))[None]
    if config.phd_chunk is not None:
      chunk = (positions // config.phd_chunk).repeat_interleave(K, dim=1)
      in_window = in_window & (chunk[:, :, None] == chunk[:, None, :])
    allowed = allowed | in_window
  segments = segment_ids.repeat_interleave(K, dim=1)
  return allowed & (segments[:, :, None] == segments[:, None, :])


def copy_positions(config, positions):
  """RoPE position of every row of the interleaved sequence, `[B, T*K]`."""
  K = config.phd_k
  if config.phd_positions == "shared":
    return positions.repeat_interleave(K, dim=1)
  copies = torch.arange(K, device=positions.device)
  return (positions[:, :, None] * K + copies).flatten(1)


def rope(x, positions, theta):
  """Rotate-half RoPE of `x [B, N, heads, Dh]` at `positions [B, N]`, in float32."""
  head_dim = x.shape[-1]
  freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=x.device)
                   / head_dim)
  angle = positions[:, :, None, None].float() * freq
  sin, cos = angle.sin(), angle.cos()
  x1, x2 = x.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class PhdRMSNorm(nn.Module):

  def __init__(self, size, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(size))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return (self.weight * x32).to(x.dtype)


class PltGate(nn.Module):
  """The per-head gate of a PLT layer's later loops, the global part's share in [0, 1]:
  sigmoid(q_h . w_h + b_h) of the post-RoPE query (weight `[H, Dh]`), or with
  `plt_gate_use_hidden_states` sigmoid(W gate_norm(x) + b) of the layer's input x (weight
  `[H, D]`, a Linear's)."""

  def __init__(self, config):
    super().__init__()
    self.reads_hidden = config.plt_gate_use_hidden_states
    width = config.hidden_size if self.reads_hidden else config.head_dim
    self.weight = nn.Parameter(torch.zeros(config.num_attention_heads, width))
    self.bias = nn.Parameter(torch.zeros(config.num_attention_heads))
    if self.reads_hidden:
      self.gate_norm = PhdRMSNorm(config.hidden_size, config.rms_norm_eps)

  def forward(self, q, layer_input):
    """Gates `[B, N, H]` (float32) of the queries `q [B, N, H, Dh]` of `layer_input`."""
    if self.reads_hidden:
      logits = self.gate_norm(layer_input).float() @ self.weight.float().T
    else:
      logits = torch.einsum("bnhe,he->bnh", q.float(), self.weight.float())
    return torch.sigmoid(logits + self.bias.float())


class PhdAttention(nn.Module):

  def __init__(self, config):
    super().__init__()
    D, H, G, Dh = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim)
    self.config, self.heads, self.kv_heads, self.head_dim = config, H, G, Dh
    self.q_proj = nn.Linear(D, H * Dh, bias=False)
    self.k_proj = nn.Linear(D, G * Dh, bias=False)
    self.v_proj = nn.Linear(D, G * Dh, bias=False)
    self.o_proj = nn.Linear(H * Dh, D, bias=False)
    if config.qk_norm:  # per head (Qwen3) or over the whole projection (OLMo2)
      self.q_norm = PhdRMSNorm(Dh if config.qk_norm_per_head else H * Dh, config.rms_norm_eps)
      self.k_norm = PhdRMSNorm(Dh if config.qk_norm_per_head else G * Dh, config.rms_norm_eps)
    if config.plt_num_loops > 1 and config.plt_window:  # mixes a PLT layer's two parts
      self.plt_gate = PltGate(config)

  def _project(self, x, proj, norm, heads):
    B, N, _ = x.shape
    y = proj(x)
    if self.config.qk_norm and not self.config.qk_norm_per_head:
      y = norm(y)
    y = y.view(B, N, heads, self.head_dim)
    if self.config.qk_norm and self.config.qk_norm_per_head:
      y = norm(y)
    return y

  def qkv(self, x, rope_positions):
    """Queries `[B, N, H, Dh]`, keys and values `[B, N, G, Dh]` of `x [B, N, D]`."""
    B, N, _ = x.shape
    q_norm, k_norm = (self.q_norm, self.k_norm) if self.config.qk_norm else (None, None)
    q = rope(self._project(x, self.q_proj, q_norm, self.heads), rope_positions,
             self.config.rope_theta)
    k = rope(self._project(x, self.k_proj, k_norm, self.kv_heads), rope_positions,
             self.config.rope_theta)
    return q, k, self.v_proj(x).view(B, N, self.kv_heads, self.head_dim)

  def attend(self, q, k, v, mask):
    """Softmax attention `[B, N, H, Dh]` of q over k, v where the boolean `mask [B, N, S]`
    allows."""
    groups = self.heads // self.kv_heads  # query head h reads key/value head h // groups
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask[:, None])
    return o.transpose(1, 2)

  def forward(self, x, rope_positions, attend):
    """`attend(q, k, v) -> [B, N, H, Dh]` is the attention proper: `self.attend` under the
    PHD mask, or a PLT loop's (modeling_plt.py)."""
    B, N, _ = x.shape
    return self.o_proj(attend(*self.qkv(x, rope_positions)).reshape(B, N, -1))


class PhdMLP(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
    self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
    self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PhdDecoderLayer(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.reordered = config.norm_style == "reordered"
    self.self_attn = PhdAttention(config)
    self.mlp = PhdMLP(config)
    self.attn_norm_name, self.mlp_norm_name = NORM_NAMES[config.norm_style]
    for name in NORM_NAMES[config.norm_style]:
      setattr(self, name, PhdRMSNorm(config.hidden_size, config.rms_norm_eps))

  def forward(self, x, rope_positions, attend):
    attn_norm, mlp_norm = getattr(self, self.attn_norm_name), getattr(self, self.mlp_norm_name)
    if self.reordered:  # OLMo2: x + norm(f(x))
      x = x + attn_norm(self.self_attn(x, rope_positions, attend))
      return x + mlp_norm(self.mlp(x))
    x = x + self.self_attn(attn_norm(x), rope_positions, attend)  # Llama: x + f(norm(x))
    return x + self.mlp(mlp_norm(x))


class PhdPreTrainedModel(PreTrainedModel):
  config_class = PhdConfig
  base_model_prefix = "model"
  _no_split_modules = ["PhdDecoderLayer"]
  _supports_sdpa = True


class PhdModel(PhdPreTrainedModel):

  def __init__(self, config):
    super().__init__(config)
    self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
    self.layers = nn.ModuleList(PhdDecoderLayer(config) for _ in range(config.num_hidden_layers))
    self.norm = PhdRMSNorm(config.hidden_size, config.rms_norm_eps)
    self.post_init()

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def forward(self, input_ids, attention_mask=None, position_ids=None):
    """Final-normed hidden states of the last copy (PLT: loop) of every token, `[B, T, D]`."""
    B, T = input_ids.shape
    K = self.config.phd_k
    if attention_mask is None:
      attention_mask = torch.ones_like(input_ids)
    segment_ids = attention_mask.long()
    if position_ids is None:  # in-document positions; left padding shifts nothing
      position_ids = (segment_ids.cumsum(-1) - 1).clamp(min=0)
    if self.config.plt_num_loops > 1:
      return plt_hidden_states(self, input_ids, segment_ids, position_ids)
    mask = phd_mask(self.config, segment_ids, position_ids)
    rope_positions = copy_positions(self.config, position_ids)
    x = self.embed_tokens(input_ids).repeat_interleave(K, dim=1)  # [B, T*K, D]
    for layer in self.layers:
      x = layer(x, rope_positions, functools.partial(layer.self_attn.attend, mask=mask))
    return self.norm(x.view(B, T, K, -1)[:, :, -1])


class PhdForCausalLM(PhdPreTrainedModel, GenerationMixin):
  _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

  def __init__(self, config):
    super().__init__(config)
    self.model = PhdModel(config)
    self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    self.post_init()

  def get_input_embeddings(self):
    return self.model.embed_tokens

  def set_input_embeddings(self, value):
    self.model.embed_tokens = value

  def get_output_embeddings(self):
    return self.lm_head

  def set_output_embeddings(self, value):
    self.lm_head = value

  def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
    # No KV cache: every step reruns the whole sequence (a reference, not a server).
    return {"input_ids": input_ids, "attention_mask": attention_mask}

  def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None,
              **kwargs):
    """Logits `[B, T, V]` (float32) from the last copy (loop) of every token; with `labels`, also
    the mean next-token cross-entropy (labels shifted inside, -100 ignored)."""
    hidden = self.model(input_ids, attention_mask, position_ids)
    logits = self.lm_head(hidden).float()
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             labels[:, 1:].reshape(-1), ignore_index=-100)
    return CausalLMOutputWithPast(loss=loss, logits=logits)
