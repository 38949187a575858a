"""The Qwen2.5-VL text path of WorldPlay / HunyuanVideo-1.5: prompt -> `text_states`, `text_mask`.

The reference (hyvideo/models/text_encoders/__init__.py, pipeline `encode_prompt`):
* the prompt goes into a chat template (system text, user prompt, generation prompt) rendered
  as `<|im_start|>system\\nSYS<|im_end|>\\n<|im_start|>user\\nPROMPT<|im_end|>\\n<|im_start|>assistant\\n`;
  an empty prompt is replaced by " "; the pipeline uses the VIDEO template;
* tokens are right-padded (pad `<|endoftext|>`) / truncated to `max_length + crop_start`
  (1000 + 108 for video, 1000 + 74 for image), where crop_start = number of template tokens
  up to and including `<|im_start|>user\\n`;
* the Qwen2.5-VL language model runs with plain positions 0..T-1 (no position_ids; the three
  M-RoPE rows are equal for text) and causal attention over the mask;
* the state used is `hidden_states[-(skip + 1)]` = hidden_states[-3] (skip 2) = the output of
  decoder layer L-3, WITHOUT the final RMSNorm; then `[:, crop_start:]` on states and mask;
  the template tail `<|im_end|>\\n<|im_start|>assistant\\n` (5 tokens) stays inside the kept part;
* CFG: negative prompts "" (-> " "), rows `cat([negative, positive])`.

Only the first L - skip decoder layers are ever needed, so the model here holds just those
(a 26-layer stack for the real 28-layer 7B): the last layer output before the norm IS
hidden_states[-3]. The decoder is `wc_jax.models.qwen2vl.language.Qwen2LanguageModel`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from wc_jax.models.qwen2vl.language import Qwen2LanguageModel, Qwen2LMConfig

SYSTEM_VIDEO = (
    "You are a helpful assistant. Describe the video by detailing the following aspects:"
    "         1. The main content and theme of the video."
    "         2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "         3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "         4. background environment, light, style and atmosphere."
    "         5. camera angles, movements, and transitions used in the video.")
SYSTEM_IMAGE = (
    "You are a helpful assistant. Describe the image by detailing the following aspects:"
    "         1. The main content and theme of the image."
    "         2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "         3. The background environment, light, style and atmosphere.")
SYSTEM = {"video": SYSTEM_VIDEO, "image": SYSTEM_IMAGE}
# template tokens before the prompt, with the Qwen2.5 tokenizer (the reference computes them once)
CROP_START = {"video": 108, "image": 74}
TEMPLATE_TAIL = "<|im_end|>\n<|im_start|>assistant\n"      # 5 tokens, kept after the crop
TAIL_TOKENS = 5
MAX_LENGTH = 1000
PAD_ID = 151643                # <|endoftext|>
IM_START_ID, IM_END_ID = 151644, 151645
USER_HEADER_IDS = (151644, 872, 198)   # "<|im_start|>user\n": crop right after these


def render_prompt(prompt: str, data_type: str = "video") -> str:
  """The chat-templated text of one prompt (empty -> " ", as the reference)."""
  if not isinstance(prompt, str):
    raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
  if data_type not in SYSTEM:
    raise ValueError(f"data_type must be 'video' or 'image', got {data_type!r}")
  if prompt == "":
    prompt = " "
  return (f"<|im_start|>system\n{SYSTEM[data_type]}<|im_end|>\n"
          f"<|im_start|>user\n{prompt}{TEMPLATE_TAIL}")


def crop_start_of(ids) -> int:
  """Index right after the first `<|im_start|>user\\n` in a token id sequence (the reference's rule)."""
  ids = [int(i) for i in ids]
  n = len(USER_HEADER_IDS)
  for i in range(len(ids) - n + 1):
    if tuple(ids[i:i + n]) == USER_HEADER_IDS:
      return i + n
  raise ValueError("the templated tokens do not contain <|im_start|>user\\n (ids 151644, 872, 198)")


@dataclasses.dataclass(frozen=True)
class QwenTextConfig:
  """The text path: the decoder (the kept layers only) plus the reference's wrapper settings."""
  lm: Qwen2LMConfig = dataclasses.field(default_factory=lambda: Qwen2LMConfig(num_hidden_layers=26))
  num_hidden_layers_full: int = 28           # layers of the checkpoint
  hidden_state_skip_layer: int = 2
  apply_final_norm: bool = False
  max_length: int = MAX_LENGTH
  crop_start: int = CROP_START["video"]

  def __post_init__(self):
    skip = self.hidden_state_skip_layer
    if not 0 <= skip < self.num_hidden_layers_full:
      raise ValueError(f"hidden_state_skip_layer {skip} must be in [0, {self.num_hidden_layers_full})")
    if self.lm.num_hidden_layers != self.kept_layers:
      raise ValueError(f"lm.num_hidden_layers {self.lm.num_hidden_layers} must be the kept layers "
                       f"{self.kept_layers} = {self.num_hidden_layers_full} - skip {skip}")
    if self.max_length < 1 or self.crop_start < 0:
      raise ValueError(f"max_length must be >= 1 and crop_start >= 0, got {self.max_length}, {self.crop_start}")

  @property
  def kept_layers(self) -> int:
    return self.num_hidden_layers_full - self.hidden_state_skip_layer

  @property
  def sequence_length(self) -> int:
    return self.max_length + self.crop_start

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["lm"] = self.lm.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "QwenTextConfig":
    d = dict(d)
    d["lm"] = Qwen2LMConfig.from_dict(d["lm"]) if isinstance(d.get("lm"), Mapping) else d.get("lm")
    return cls(**d)

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], *, hidden_state_skip_layer: int = 2, apply_final_norm: bool = False,
              max_length: int = MAX_LENGTH, crop_start: int = CROP_START["video"], **lm_overrides) -> "QwenTextConfig":
    full = Qwen2LMConfig.from_hf(config, **lm_overrides)
    kept = full.num_hidden_layers - hidden_state_skip_layer if hidden_state_skip_layer else full.num_hidden_layers
    return cls(lm=full.replace(num_hidden_layers=kept), num_hidden_layers_full=full.num_hidden_layers,
               hidden_state_skip_layer=hidden_state_skip_layer, apply_final_norm=apply_final_norm,
               max_length=max_length, crop_start=crop_start)


class QwenTextEncoder(nnx.Module):
  """Templated token ids [B, max_length + crop_start] (+ mask) -> (states [B, max_length, C], mask)."""

  def __init__(self, cfg: QwenTextConfig, *, rngs: nnx.Rngs):
    if cfg.hidden_state_skip_layer == 0:
      # hidden_states[-1] is the normed last layer: keep every layer
      if cfg.lm.num_hidden_layers != cfg.num_hidden_layers_full:
        raise ValueError("with hidden_state_skip_layer 0 every layer is kept")
    self.cfg = cfg
    self.lm = Qwen2LanguageModel(cfg.lm, rngs=rngs)

  def hidden_states(self, input_ids, attention_mask):
    """The selected hidden state [B, T, C] (uncropped) in the compute dtype."""
    cfg = self.cfg
    out = self.lm(input_ids, attention_mask=attention_mask)
    if cfg.hidden_state_skip_layer == 0:
      return out.last_hidden_state
    h = out.last_layer_output
    return self.lm.norm(h) if cfg.apply_final_norm else h

  def __call__(self, input_ids, attention_mask, crop_start: int | None = None):
    """crop_start overrides the config's (e.g. 74 for ids made with the image template)."""
    cfg = self.cfg
    crop = cfg.crop_start if crop_start is None else int(crop_start)
    if input_ids.ndim != 2:
      raise ValueError(f"QwenTextEncoder: input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is None or attention_mask.shape != input_ids.shape:
      raise ValueError(f"QwenTextEncoder: attention_mask must be [B, T] = {tuple(input_ids.shape)}, got "
                       f"{None if attention_mask is None else tuple(attention_mask.shape)}")
    if input_ids.shape[1] <= crop:
      raise ValueError(f"QwenTextEncoder: {input_ids.shape[1]} tokens leave nothing after crop_start "
                       f"{crop}; expected max_length + crop_start = {cfg.max_length + crop}")
    h = self.hidden_states(input_ids, attention_mask)
    return h[:, crop:], jnp.asarray(attention_mask)[:, crop:]

  def encode_cfg(self, input_ids, attention_mask, neg_input_ids, neg_attention_mask):
    """The DiT's CFG inputs: (cat([neg, pos]) states [2B, max_length, C], masks [2B, max_length])."""
    ids = jnp.concatenate([jnp.asarray(neg_input_ids), jnp.asarray(input_ids)], axis=0)
    mask = jnp.concatenate([jnp.asarray(neg_attention_mask), jnp.asarray(attention_mask)], axis=0)
    return self(ids, mask)
