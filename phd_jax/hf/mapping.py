"""Hugging Face configs and tensor names <-> phd_jax model fields and parameter paths.

Architectures read and written (weights in transformers' own names and layouts):
  Olmo2ForCausalLM   norms after each sublayer ("reordered"), QK-norm across all heads
  LlamaForCausalLM   norms before each sublayer ("pre"), no QK-norm
  Qwen3ForCausalLM   "pre", QK-norm per head
  PhdForCausalLM     any of the above plus the PHD or PLT variant (`modeling_phd.py`); a
                     gated PLT variant adds each layer's `self_attn.plt_gate` (the released
                     PLT model's names)
What phd_jax cannot compute (RoPE scaling, biases, sliding-window layers, other
activations, Qwen2's always-on q/k/v biases) is refused with the config field that asks
for it, before any weight is read.

Parameter paths are per layer (`("blocks", l, "attn", "wq")`, as with
`model.scan_layers=False`); `phd_jax.hf.checkpoints` places them into stacked parameters.
A linear layer is `[in, out]` here (heads on their own axes, e.g. `wq [D, H, Dh]`) and
`[out, in]` in PyTorch: such tensors are transposed, then reshaped.
"""

from __future__ import annotations

import dataclasses
import math
import os

from phd_jax.hf import files
from phd_jax.masks import PHDSpec, PLTSpec

CONFIG_FILE = "config.json"
PHD_ARCHITECTURE = "PhdForCausalLM"
# Fixed traits of each dense architecture: (model_type, norm_style, qk_norm, qk_norm_per_head).
NATIVE = {
    "Olmo2ForCausalLM": ("olmo2", "reordered", True, False),
    "LlamaForCausalLM": ("llama", "pre", False, False),
    "Qwen3ForCausalLM": ("qwen3", "pre", True, True),
}
REFUSED = {
    "Qwen2ForCausalLM": "its q_proj/k_proj/v_proj always carry biases, and phd_jax's attention "
                        "has none",
}
# Checkpoint names of (attn_norm, mlp_norm) in each norm style.
NORM_NAMES = {"reordered": ("post_attention_layernorm", "post_feedforward_layernorm"),
              "pre": ("input_layernorm", "post_attention_layernorm")}
# Buffers some checkpoints carry that hold nothing learned.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def read_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist: not a Hugging Face model directory")
  return files.read_json(files.inside(hf_dir, CONFIG_FILE))


def architecture(hf_config: dict, where: str = CONFIG_FILE) -> str:
  names = hf_config.get("architectures") or []
  if len(names) != 1:
    raise ValueError(f"{where}: architectures={names!r}; expected exactly one of "
                     f"{sorted([*NATIVE, PHD_ARCHITECTURE])}")
  name = names[0]
  if name in REFUSED:
    raise ValueError(f"{where}: architectures=[{name!r}] is not supported: {REFUSED[name]}")
  if name not in NATIVE and name != PHD_ARCHITECTURE:
    raise ValueError(f"{where}: architectures=[{name!r}] is not supported; phd_jax reads "
                     f"{sorted([*NATIVE, PHD_ARCHITECTURE])}")
  return name


def _rope_theta(hf_config: dict, where: str) -> float:
  """theta of plain RoPE, from transformers 5's `rope_parameters` or 4's `rope_theta`."""
  rope = hf_config.get("rope_parameters") or {}
  if hf_config.get("rope_scaling"):
    raise ValueError(f"{where}: rope_scaling={hf_config['rope_scaling']!r} is not supported; "
                     "phd_jax implements plain RoPE only")
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"{where}: rope_parameters.rope_type={rope['rope_type']!r} is not "
                     "supported; phd_jax implements plain RoPE ('default') only")
  factor = rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
  if factor != 1.0:
    raise ValueError(f"{where}: partial_rotary_factor={factor} is not supported; phd_jax "
                     "rotates the whole head")
  theta = rope.get("rope_theta", hf_config.get("rope_theta"))
  if theta is None:
    raise ValueError(f"{where}: no rope_parameters.rope_theta nor rope_theta")
  return float(theta)


def _refuse_unsupported(hf_config: dict, where: str) -> None:
  for field in ("attention_bias", "mlp_bias"):
    if hf_config.get(field):
      raise ValueError(f"{where}: {field}=true is not supported; phd_jax layers have no biases")
  if hf_config.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{where}: hidden_act={hf_config['hidden_act']!r} is not supported; "
                     "phd_jax's MLP is SwiGLU (silu)")
  if hf_config.get("use_sliding_window"):
    raise ValueError(f"{where}: use_sliding_window=true is not supported; phd_jax layers "
                     "attend to the whole context")
  layer_types = set(hf_config.get("layer_types") or ())
  if layer_types - {"full_attention"}:
    raise ValueError(f"{where}: layer_types={sorted(layer_types)} is not supported; phd_jax "
                     "has only full_attention layers")


def _required(hf_config: dict, field: str, where: str):
  if hf_config.get(field) is None:
    raise ValueError(f"{where}: the field {field!r} is missing")
  return hf_config[field]


def _count(hf_config: dict, field: str, where: str, default: int | None = None) -> int:
  """A positive integer field; `default` when it is absent (None: required)."""
  value = _required(hf_config, field, where) if default is None else hf_config.get(field)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{where}: {field}={value!r} is not a positive integer")
  return value


def model_fields(hf_config: dict, where: str = CONFIG_FILE) -> dict:
  """`config.model` fields (ModelConfig names) that reproduce the HF model exactly."""
  name = architecture(hf_config, where)
  _refuse_unsupported(hf_config, where)
  heads = _count(hf_config, "num_attention_heads", where)
  d_model = _count(hf_config, "hidden_size", where)
  if name == PHD_ARCHITECTURE:
    norm_style, qk_norm, per_head = (hf_config.get("norm_style", "reordered"),
                                     bool(hf_config.get("qk_norm", True)),
                                     bool(hf_config.get("qk_norm_per_head", False)))
  else:
    _, norm_style, qk_norm, per_head = NATIVE[name]
  return dict(
      vocab_size=_count(hf_config, "vocab_size", where),
      d_model=d_model,
      num_layers=_count(hf_config, "num_hidden_layers", where),
      num_heads=heads,
      num_kv_heads=_count(hf_config, "num_key_value_heads", where, default=heads),
      head_dim=_count(hf_config, "head_dim", where, default=max(d_model // heads, 1)),
      mlp_dim=_count(hf_config, "intermediate_size", where),
      rope_theta=_rope_theta(hf_config, where),
      norm_eps=float(_required(hf_config, "rms_norm_eps", where)),
      norm_style=norm_style,
      qk_norm=qk_norm,
      qk_norm_per_head=per_head,
      tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
  )


def native_architecture(cfg) -> str | None:
  """The dense HF architecture computing exactly `cfg` (a ModelConfig), if there is one."""
  for name, (_, norm_style, qk_norm, per_head) in NATIVE.items():
    if (cfg.norm_style, cfg.qk_norm, cfg.qk_norm and cfg.qk_norm_per_head) == (
        norm_style, qk_norm, per_head):
      return name
  return None


def gate_input(hf_config: dict, where: str = CONFIG_FILE) -> str | None:
  """What the PLT gates of a config.json's layers read ("query" or "hidden"); None when
  its layers have no gates (any model but a PLT variant with a window)."""
  if architecture(hf_config, where) != PHD_ARCHITECTURE:
    return None
  window = hf_config.get("plt_window") or 0
  if isinstance(window, bool) or not isinstance(window, int) or window < 0:
    raise ValueError(f"{where}: plt_window={window!r} is not a count of tokens")
  if _count(hf_config, "plt_num_loops", where, default=1) == 1 or window == 0:
    return None
  return "hidden" if hf_config.get("plt_gate_use_hidden_states") else "query"


def _variant_fields(spec: PHDSpec | PLTSpec) -> dict:
  """PhdConfig's fields of the variant (configuration_phd.py)."""
  if isinstance(spec, PLTSpec):
    return dict(plt_num_loops=spec.loops, plt_window=spec.window,
                plt_gate_use_hidden_states=spec.gate == "hidden",
                plt_emb_scale=spec.emb_scale, plt_hidden_scale=spec.hidden_scale,
                plt_normalize_per_loop=spec.norm_per_loop)
  return dict(phd_k=spec.k, phd_window=spec.window, phd_chunk=spec.chunk,
              phd_window_unit=spec.window_unit, phd_positions=spec.positions)


def hf_config(cfg, spec: PHDSpec | PLTSpec, name: str, *, max_positions: int,
              dtype: str) -> dict:
  """config.json of architecture `name` for a ModelConfig and variant."""
  config = dict(
      architectures=[name], vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
      intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, hidden_act="silu", rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta,  # transformers 4; 5 reads rope_parameters
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      attention_bias=False, tie_word_embeddings=cfg.tie_embeddings,
      max_position_embeddings=max_positions, initializer_range=cfg.init_std, dtype=dtype)
  if name == PHD_ARCHITECTURE:
    config.update(
        model_type="phd", norm_style=cfg.norm_style, qk_norm=cfg.qk_norm,
        qk_norm_per_head=cfg.qk_norm_per_head, **_variant_fields(spec), phd_variant=spec.name,
        auto_map={"AutoConfig": "configuration_phd.PhdConfig",
                  "AutoModelForCausalLM": "modeling_phd.PhdForCausalLM"})
  else:
    config["model_type"] = NATIVE[name][0]
    if name == "LlamaForCausalLM":
      config["mlp_bias"] = False
  return config


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter: its path here, its name and shape in the HF checkpoint.

  `transposed`: ours = hf.T.reshape(shape); else ours = hf.reshape(shape).
  """
  path: tuple
  hf_name: str
  shape: tuple[int, ...]
  hf_shape: tuple[int, ...]
  transposed: bool


def tensors(cfg, gate: str | None = None) -> list[Tensor]:
  """Every parameter of a ModelConfig with its HF name, per layer, in checkpoint order;
  `gate`: what the layers' PLT gates read ("query", "hidden"), None without gates."""
  D, H, G, Dh, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                       cfg.mlp_dim, cfg.vocab_size)
  out = [Tensor(("embed", "table"), "model.embed_tokens.weight", (V, D), (V, D), False)]
  attn_norm, mlp_norm = NORM_NAMES[cfg.norm_style]
  for layer in range(cfg.num_layers):
    p, a = ("blocks", layer), f"model.layers.{layer}."
    out += [
        Tensor((*p, "attn", "wq"), a + "self_attn.q_proj.weight", (D, H, Dh), (H * Dh, D), True),
        Tensor((*p, "attn", "wk"), a + "self_attn.k_proj.weight", (D, G, Dh), (G * Dh, D), True),
        Tensor((*p, "attn", "wv"), a + "self_attn.v_proj.weight", (D, G, Dh), (G * Dh, D), True),
        Tensor((*p, "attn", "wo"), a + "self_attn.o_proj.weight", (H, Dh, D), (D, H * Dh), True),
    ]
    if cfg.qk_norm:
      q_shape, k_shape = ((Dh,), (Dh,)) if cfg.qk_norm_per_head else ((H, Dh), (G, Dh))
      out += [
          Tensor((*p, "attn", "q_norm", "scale"), a + "self_attn.q_norm.weight", q_shape,
                 (math.prod(q_shape),), False),
          Tensor((*p, "attn", "k_norm", "scale"), a + "self_attn.k_norm.weight", k_shape,
                 (math.prod(k_shape),), False),
      ]
    if gate is not None:  # named as in the released PLT model
      g, hf_gate = (*p, "attn", "gate"), a + "self_attn.plt_gate."
      if gate == "hidden":  # a Linear's [H, D] (ours transposed) after the gate's own norm
        out += [Tensor((*g, "weight"), hf_gate + "weight", (D, H), (H, D), True),
                Tensor((*g, "norm", "scale"), hf_gate + "gate_norm.weight", (D,), (D,), False)]
      else:  # one vector per head, [H, Dh] on both sides
        out.append(Tensor((*g, "weight"), hf_gate + "weight", (H, Dh), (H, Dh), False))
      out.append(Tensor((*g, "bias"), hf_gate + "bias", (H,), (H,), False))
    out += [
        Tensor((*p, "mlp", "gate"), a + "mlp.gate_proj.weight", (D, F), (F, D), True),
        Tensor((*p, "mlp", "up"), a + "mlp.up_proj.weight", (D, F), (F, D), True),
        Tensor((*p, "mlp", "down"), a + "mlp.down_proj.weight", (F, D), (D, F), True),
        Tensor((*p, "attn_norm", "scale"), a + attn_norm + ".weight", (D,), (D,), False),
        Tensor((*p, "mlp_norm", "scale"), a + mlp_norm + ".weight", (D,), (D,), False),
    ]
  out.append(Tensor(("final_norm", "scale"), "model.norm.weight", (D,), (D,), False))
  if not cfg.tie_embeddings:
    out.append(Tensor(("lm_head",), "lm_head.weight", (D, V), (V, D), True))
  return out


def write_ours(tensor: Tensor, hf_array, out) -> None:
  """Write the HF array into `out` (contiguous, this tensor's shape, any float dtype),
  converting in place: no temporary of the tensor's size."""
  view = out.view()
  view.shape = tensor.hf_shape[::-1] if tensor.transposed else tensor.hf_shape  # no copy
  view[...] = hf_array.T if tensor.transposed else hf_array


def to_hf(tensor: Tensor, array):
  if tensor.transposed:
    return array.reshape(tensor.hf_shape[::-1]).T
  return array.reshape(tensor.hf_shape)
