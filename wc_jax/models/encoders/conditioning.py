"""Prompts and a first image -> the DiT's conditioning inputs, as WorldPlay's pipeline builds them.

    text_states, text_mask     = encode_text_prompts(text_encoder, prompts, tokenize)
    byt5_states, byt5_mask     = encode_glyph_prompts(byt5_encoder, prompts)
    vision_states              = encode_reference_image(siglip, image)

With `cfg=True` (the default, as the pipeline with guidance) every output has 2B rows:
negatives first (prompt "" -> " " in the template for the text path, zeros for ByT5, the same
image for SigLIP), then positives. Shapes for the real models:
text [2B, 1000, 3584] / [2B, 1000], byt5 [2B, 256, 1472] / [2B, 256], vision [2, 729, 1152].

Tokenising needs the Qwen2.5 BPE: pass `tokenize(text) -> list[int]` for PLAIN text (no special
tokens), e.g. `wc_jax.rewards.hpsv3.load_tokenizer(<checkpoint>/tokenizer.json)`; the chat
template's special tokens are placed here, so the BPE never sees them (as HF splits them out).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.encoders import byt5_text, image_resize, qwen_text

Tokenize = Callable[[str], Sequence[int]]
_QWEN_SPECIALS = {"<|im_start|>": qwen_text.IM_START_ID, "<|im_end|>": qwen_text.IM_END_ID,
                  "<|endoftext|>": qwen_text.PAD_ID}
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _QWEN_SPECIALS) + ")")


# jitted calls (one compile per shape, cached across prompts); plain objects run eagerly
_TEXT_CFG = nnx.jit(lambda m, ids, mask, nids, nmask: m.encode_cfg(ids, mask, nids, nmask))
_TEXT = nnx.jit(lambda m, ids, mask: m(ids, mask))
_BYT5 = nnx.jit(lambda m, ids, mask: m(ids, mask))
_SIGLIP = nnx.jit(lambda m, px: m(px))


def _call(jitted, fallback, model, *args):
  return jitted(model, *args) if isinstance(model, nnx.Module) else fallback(model, *args)


def _as_prompt_list(prompts) -> list[str]:
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise ValueError("no prompts given (an empty list); pass at least one prompt string")
  bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
  if bad:
    raise TypeError(f"prompts must be strings, got {bad}")
  return prompts


def template_token_ids(prompt: str, tokenize: Tokenize, data_type: str = "video") -> list[int]:
  """Token ids of the chat-templated prompt: the special tokens placed directly, the text
  between them through `tokenize` (how HF's tokenizer treats added special tokens)."""
  ids: list[int] = []
  for i, part in enumerate(_SPECIAL_SPLIT.split(qwen_text.render_prompt(prompt, data_type))):
    if i % 2:
      ids.append(_QWEN_SPECIALS[part])
    elif part:
      ids.extend(int(t) for t in tokenize(part))
  return ids


def crop_start_for(tokenize: Tokenize, data_type: str = "video") -> int:
  """The reference's crop_start: template tokens up to `<|im_start|>user\\n`, measured once on
  "a photo of a cat" (108 video / 74 image with the Qwen2.5 tokenizer)."""
  return qwen_text.crop_start_of(template_token_ids("a photo of a cat", tokenize, data_type))


def tokenize_prompts(prompts, tokenize: Tokenize, *, data_type: str = "video", max_length: int = qwen_text.MAX_LENGTH,
                     crop_start: int | None = None, on_overflow: str = "truncate"):
  """(ids int64 [B, max_length + crop_start], mask int64 [same], crop_start).

  Right padding with `<|endoftext|>`. A templated prompt longer than the limit is cut at it
  (on_overflow="truncate", the reference: the template tail is lost first) or rejected
  (on_overflow="error")."""
  if on_overflow not in ("truncate", "error"):
    raise ValueError(f"on_overflow must be 'truncate' or 'error', got {on_overflow!r}")
  prompts = _as_prompt_list(prompts)
  crop = crop_start_for(tokenize, data_type) if crop_start is None else int(crop_start)
  total = max_length + crop
  ids = np.full((len(prompts), total), qwen_text.PAD_ID, np.int64)
  mask = np.zeros((len(prompts), total), np.int64)
  for b, p in enumerate(prompts):
    seq = template_token_ids(p, tokenize, data_type)
    if len(seq) > total:
      if on_overflow == "error":
        raise ValueError(f"prompt {b} is {len(seq) - crop} tokens with the template tail; the limit is "
                         f"{max_length} (the reference truncates; pass on_overflow='truncate')")
      seq = seq[:total]
    ids[b, :len(seq)] = seq
    mask[b, :len(seq)] = 1
  return ids, mask, crop


def encode_text_prompts(text_encoder, prompts, tokenize: Tokenize, *, negative_prompt: str = "", cfg: bool = True,
                        data_type: str = "video", on_overflow: str = "truncate"):
  """(text_states [2B or B, max_length, C], text_mask int [same, max_length]) for the DiT."""
  prompts = _as_prompt_list(prompts)
  c = text_encoder.cfg
  ids, mask, crop = tokenize_prompts(prompts, tokenize, data_type=data_type, max_length=c.max_length,
                                     on_overflow=on_overflow)
  if crop != c.crop_start:
    raise ValueError(f"the tokenizer gives crop_start {crop} for the {data_type} template but the text encoder "
                     f"was built with {c.crop_start}; build it with crop_start={crop}")
  if cfg:
    neg_ids, neg_mask, _ = tokenize_prompts([negative_prompt] * len(prompts), tokenize, data_type=data_type,
                                            max_length=c.max_length, crop_start=crop, on_overflow="truncate")
    states, m = _call(_TEXT_CFG, lambda t, *a: t.encode_cfg(*a), text_encoder, jnp.asarray(ids),
                      jnp.asarray(mask), jnp.asarray(neg_ids), jnp.asarray(neg_mask))
  else:
    states, m = _call(_TEXT, lambda t, *a: t(*a), text_encoder, jnp.asarray(ids), jnp.asarray(mask))
  return states, m


def encode_glyph_prompts(byt5_encoder, prompts, *, cfg: bool = True, max_length: int = byt5_text.MAX_LENGTH,
                         special_tokens: Mapping[str, int] | None = None):
  """(byt5_text_states [2B or B, max_length, d] float32, byt5_text_mask int64 [same, max_length]).

  Prompts without quoted text get zeros and mask 0 (the model is not run for them); the
  CFG negatives ("") are always zeros."""
  prompts = _as_prompt_list(prompts)
  ids, mask, has, _ = byt5_text.glyph_tokens(prompts, max_length, special_tokens)
  d = byt5_encoder.cfg.d_model
  states = jnp.zeros((len(prompts), max_length, d), jnp.float32)
  if has.any():
    rows = np.flatnonzero(has)
    out = _call(_BYT5, lambda t, *a: t(*a), byt5_encoder, jnp.asarray(ids[rows]),
                jnp.asarray(mask[rows])).astype(jnp.float32)
    states = states.at[rows].set(out)
  mask = jnp.asarray(np.where(has[:, None], mask, 0))
  if cfg:
    states = jnp.concatenate([jnp.zeros_like(states), states], axis=0)
    mask = jnp.concatenate([jnp.zeros_like(mask), mask], axis=0)
  return states, mask


def encode_reference_image(siglip, image, *, resolution: str = "480p", base_size: int | None = None,
                           stride: int = 16, cfg: bool = True, dtype=None):
  """vision_states [2 or 1, (S/p)^2, D] from one uint8 RGB image [H, W, 3] (or [1, H, W, 3]).

  The reference's path: closest bucket of `resolution` (480p: base 640), LANCZOS cover-resize
  and centre crop, SigLIP processor (bicubic to S x S, (x/255 - 0.5)/0.5), tower's
  last_hidden_state; the reference casts it to bf16 (pass dtype=jnp.bfloat16)."""
  image = np.asarray(image) if not isinstance(image, np.ndarray) else image
  if image.ndim == 4 and image.shape[0] == 1:
    image = image[0]
  if base_size is None:
    if resolution not in image_resize.TARGET_SIZE_CONFIG:
      raise ValueError(f"resolution must be one of {sorted(image_resize.TARGET_SIZE_CONFIG)}, got {resolution!r}")
    base_size = image_resize.TARGET_SIZE_CONFIG[resolution]["bucket_hw_base_size"]
  _, _, pixels = image_resize.reference_image_pixels(image, siglip.cfg.image_size, base_size, stride)
  states = _call(_SIGLIP, lambda t, *a: t(*a), siglip, jnp.asarray(pixels)[None])
  if dtype is not None:
    states = states.astype(dtype)
  return jnp.concatenate([states, states], axis=0) if cfg else states


def no_image_vision_states(batch: int, tokens: int = 729, dim: int = 1152, cfg: bool = True):
  """t2v (no image): zeros, as the reference (the DiT masks them out)."""
  return jnp.zeros(((2 if cfg else 1) * batch, tokens, dim), jnp.float32)


def encode_conditioning(prompts, image=None, *, text_encoder, tokenize: Tokenize, byt5_encoder, siglip=None,
                        cfg: bool = True, negative_prompt: str = "", resolution: str = "480p",
                        vision_dtype=None) -> dict:
  """All DiT conditioning for `prompts` (+ one first image, or None for t2v zeros), keyed as the DiT's
  `encode_text` arguments / the reference fixtures: text_states, encoder_attention_mask,
  byt5_text_states, byt5_text_mask, vision_states (rows: negatives then positives when cfg)."""
  prompts = _as_prompt_list(prompts)
  text_states, text_mask = encode_text_prompts(text_encoder, prompts, tokenize, negative_prompt=negative_prompt,
                                               cfg=cfg)
  byt5_states, byt5_mask = encode_glyph_prompts(byt5_encoder, prompts, cfg=cfg)
  if image is None:
    dim = siglip.cfg.hidden_size if siglip is not None else 1152
    tokens = siglip.cfg.num_patches if siglip is not None else 729
    vision = no_image_vision_states(len(prompts), tokens, dim, cfg)
  else:
    if siglip is None:
      raise ValueError("an image was given but no SigLIP tower (siglip=...)")
    one = encode_reference_image(siglip, image, resolution=resolution, cfg=False, dtype=vision_dtype)
    vision = jnp.broadcast_to(one, ((2 if cfg else 1) * len(prompts),) + one.shape[1:])
  return {"text_states": text_states, "encoder_attention_mask": text_mask, "byt5_text_states": byt5_states,
          "byt5_text_mask": byt5_mask, "vision_states": vision}

