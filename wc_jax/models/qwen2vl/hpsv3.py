"""HPSv3: Qwen2-VL-7B with a reward head read at the `<|Reward|>` token, in Flax NNX.

Forward (the reference `Qwen2VLRewardModelBT.forward`):
  1. embeddings of input_ids; the vision tower's tokens replace the `<|image_pad|>`
     rows, in order (masked scatter);
  2. the language model with positions 0..L-1 (HPSv3 passes `position_ids=None`,
     so M-RoPE degenerates to plain RoPE), causal + padding mask, final RMSNorm;
  3. the float32 head Linear(C,1024)-ReLU-Linear(1024,16)-ReLU-Linear(16,2) at the
     `<|Reward|>` token -> (mu, sigma). WorldCompass uses mu.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.qwen2vl.language import HPSV3_7B, Qwen2LanguageModel, Qwen2LMConfig
from wc_jax.models.qwen2vl.vision import QWEN2_VL_7B as VISION_7B, VisionConfig, VisionTransformer
from wc_jax.nn.layers import dense

# Qwen2-VL tokenizer ids (+ HPSv3's added token).
PAD_ID = 151643              # <|endoftext|>
IM_START_ID = 151644
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
REWARD_ID = 151657


@dataclasses.dataclass(frozen=True)
class HPSv3Config:
  text: Qwen2LMConfig = HPSV3_7B
  vision: VisionConfig = VISION_7B
  image_token_id: int = IMAGE_PAD_ID
  reward_token_id: int = REWARD_ID
  pad_token_id: int = PAD_ID
  head_hidden: tuple[int, ...] = (1024, 16)
  output_dim: int = 2

  def __post_init__(self):
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size "
                       f"{self.text.hidden_size}")

  def replace(self, **kw) -> "HPSv3Config":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return {"text": self.text.to_dict(), "vision": self.vision.to_dict(), "image_token_id": self.image_token_id,
            "reward_token_id": self.reward_token_id, "pad_token_id": self.pad_token_id,
            "head_hidden": list(self.head_hidden), "output_dim": self.output_dim}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "HPSv3Config":
    d = dict(d)
    d["text"] = Qwen2LMConfig.from_dict(d["text"])
    d["vision"] = VisionConfig.from_dict(d["vision"])
    if "head_hidden" in d:
      d["head_hidden"] = tuple(int(x) for x in d["head_hidden"])
    return cls(**d)

  def with_execution(self, **kw) -> "HPSv3Config":
    """Same dtype / attention / remat options on both towers (the head stays float32)."""
    return self.replace(text=self.text.replace(**kw), vision=self.vision.replace(**kw))


HPSV3 = HPSv3Config()


class RewardHead(nnx.Module):
  """float32 MLP (dropout is inert at inference): [..., C] -> [..., output_dim]."""

  def __init__(self, hidden: int, dims: tuple[int, ...], out: int, *, rngs: nnx.Rngs):
    widths = (hidden, *dims, out)
    names = [("embed", "mlp")] + [("mlp", "embed_out")] * (len(widths) - 2)
    self.layers = nnx.List([dense(a, b, ax, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
                            for (a, b), ax in zip(zip(widths[:-1], widths[1:]), names)])

  def __call__(self, x, collect: bool = False):
    x = x.astype(jnp.float32)
    inter = []
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
        inter.append(x)
    return (x, inter) if collect else x


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class HPSv3Model(nnx.Module):
  """input_ids [B,L], attention_mask [B,L], pixel_values [sum P, 1176], grid_thw (static) -> [B, 2]."""

  def __init__(self, cfg: HPSv3Config = HPSV3, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.visual = VisionTransformer(cfg.vision, rngs=rngs)
    self.model = Qwen2LanguageModel(cfg.text, rngs=rngs)
    self.rm_head = RewardHead(cfg.text.hidden_size, cfg.head_hidden, cfg.output_dim, rngs=rngs)

  def splice(self, input_ids, image_embeds):
    """Token embeddings with the image tokens' rows replaced by image_embeds (in order)."""
    emb = self.model.embed(input_ids)
    is_img = input_ids == self.cfg.image_token_id
    if _concrete(input_ids):
      n = int(np.sum(np.asarray(is_img)))
      if n != image_embeds.shape[0]:
        raise ValueError(f"HPSv3: {n} image tokens in input_ids but the vision tower gave "
                         f"{image_embeds.shape[0]} image features")
    flat = is_img.reshape(-1)
    idx = jnp.clip(jnp.cumsum(flat) - 1, 0, max(image_embeds.shape[0] - 1, 0))
    rows = image_embeds.astype(emb.dtype)[idx].reshape(emb.shape)
    return jnp.where(is_img[..., None], rows, emb)

  def reward_positions(self, input_ids):
    is_r = input_ids == self.cfg.reward_token_id
    if _concrete(input_ids):
      counts = np.sum(np.asarray(is_r), axis=1)
      if np.any(counts != 1):
        raise ValueError(f"HPSv3: every row needs exactly one <|Reward|> token (id {self.cfg.reward_token_id}); "
                         f"counts per row {counts.tolist()}")
    return jnp.argmax(is_r, axis=1)

  def __call__(self, input_ids, attention_mask, pixel_values, grid_thw, *, collect: bool = False):
    if not jnp.issubdtype(jnp.asarray(input_ids).dtype, jnp.integer):
      raise TypeError(f"HPSv3: input_ids must be integers, got {jnp.asarray(input_ids).dtype}")
    input_ids = jnp.asarray(input_ids)
    vis = self.visual(pixel_values, grid_thw, collect=collect)
    image_embeds, vinter = vis if collect else (vis, None)
    x = self.splice(input_ids, image_embeds)
    out = self.model(inputs_embeds=x, attention_mask=attention_mask, positions=None,
                     output_hidden_states=collect)
    pos = self.reward_positions(input_ids)
    pooled = jnp.take_along_axis(out.last_hidden_state, pos[:, None, None], axis=1)[:, 0]
    logits, hinter = self.rm_head(pooled, collect=True)
    if not collect:
      return logits
    inter = {f"vision_{k}": v for k, v in vinter.items()}
    inter.update(llm_layer0_out=out.hidden_states[1], llm_layerlast_out=out.last_layer_output,
                 llm_final_norm_out=out.last_hidden_state, pooled_hidden=pooled,
                 rm_head_h1_relu=hinter[0], rm_head_h2_relu=hinter[-1], reward_token_pos=pos)
    return logits, inter


def tiny_config(**kw) -> HPSv3Config:
  """The HPSv3 fixture's tiny config (compact vocabulary ids)."""
  from wc_jax.models.qwen2vl import language, vision
  base = dict(text=language.tiny_config(), vision=vision.tiny_config(), image_token_id=258,
              reward_token_id=260, pad_token_id=253)
  base.update(kw)
  return HPSv3Config(**base)
