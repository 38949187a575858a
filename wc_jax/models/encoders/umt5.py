"""umT5-XXL encoder of LingBot-World / Wan2.x: prompt -> the [B, text_len, 4096] states the DiT reads.

The network is the T5 encoder of `t5.py` with the umT5 choices (Wan's `wan/modules/t5.py`,
`umt5_xxl(shared_pos=False)`): every layer owns its relative-position table (no sharing),
gated-GELU(tanh) FFN `fc2(fc1(x) * gelu(gate(x)))`, fp32-statistics RMSNorm, no 1/sqrt(d)
logit scale, a final RMSNorm. Wan's names map to T5Config: dim -> d_model, dim_attn ->
num_heads * d_kv, dim_ffn -> d_ff, num_buckets -> relative_attention_num_buckets (max
distance 128).

How the reference feeds the DiT (t5.py `T5EncoderModel.__call__`, model.py `WanModel.forward`):
the prompt is cleaned (ftfy + HTML unescape + whitespace collapse), tokenized with `</s>`,
truncated / padded to text_len (512) with a mask; the padded rows are computed with the mask
but then cut off (`u[:len]`) and the DiT zero-pads back to text_len. `encode_prompts` returns
that directly: [B, text_len, dim] with zero rows past each prompt's length.

The tokenizer here wraps a text -> ids backend (the checkpoint's tokenizer.json through the
`tokenizers` package, or its spiece.model through `sentencepiece`); loading it from a folder
is `wc_jax.convert.encoders.load_umt5_tokenizer` (models do no file I/O).
"""
from __future__ import annotations

import dataclasses
import html
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import regex as re

from wc_jax.models.encoders.t5 import T5Config, T5Encoder

# wan/modules/t5.py umt5_xxl(): the released encoder (its decoder is not used by Wan / LingBot)
UMT5_XXL = dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
                num_buckets=32, shared_pos=False)
TEXT_LEN = 512          # wan/configs/shared_config.py text_len
PAD_ID, EOS_ID = 0, 1   # umT5 / T5 sentencepiece conventions (<pad> 0, </s> 1, <unk> 2)

UMT5Encoder = T5Encoder   # the same module; umT5 differs only in its config (per-layer position bias)


def umt5_config(vocab: int = UMT5_XXL["vocab"], dim: int = UMT5_XXL["dim"], dim_attn: int = UMT5_XXL["dim_attn"],
                dim_ffn: int = UMT5_XXL["dim_ffn"], num_heads: int = UMT5_XXL["num_heads"],
                num_layers: int = UMT5_XXL["num_layers"], num_buckets: int = UMT5_XXL["num_buckets"],
                shared_pos: bool = False, *, dtype: str = "float32", param_dtype: str = "float32",
                remat: bool = True, **ignored) -> T5Config:
  """T5Config from the reference's T5Encoder arguments (defaults: umT5-XXL). Unused reference
  arguments (dropout, decoder_layers, encoder_layers alias) are accepted and ignored."""
  if "encoder_layers" in ignored:
    num_layers = int(ignored.pop("encoder_layers"))
  if "vocab_size" in ignored:
    vocab = int(ignored.pop("vocab_size"))
  unknown = set(ignored) - {"dropout", "decoder_layers"}
  if unknown:
    raise TypeError(f"umt5_config: unknown arguments {sorted(unknown)}")
  if dim_attn % num_heads:
    raise ValueError(f"umt5_config: dim_attn {dim_attn} is not a multiple of num_heads {num_heads}")
  return T5Config(vocab_size=int(vocab), d_model=int(dim), d_kv=int(dim_attn) // int(num_heads), d_ff=int(dim_ffn),
                  num_layers=int(num_layers), num_heads=int(num_heads),
                  relative_attention_num_buckets=int(num_buckets), relative_attention_max_distance=128,
                  layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", dtype=dtype, param_dtype=param_dtype,
                  remat=remat, per_layer_position_bias=not shared_pos)


def reference_args(cfg: T5Config) -> dict:
  """The reference T5Encoder arguments of `cfg` (inverse of umt5_config)."""
  return dict(vocab=cfg.vocab_size, dim=cfg.d_model, dim_attn=cfg.inner_dim, dim_ffn=cfg.d_ff,
              num_heads=cfg.num_heads, num_layers=cfg.num_layers, num_buckets=cfg.relative_attention_num_buckets,
              shared_pos=not cfg.per_layer_position_bias)


# ----------------------------------------------------------------------------- text cleaning


def clean_prompt(text: str) -> str:
  """The reference's clean='whitespace': ftfy.fix_text, HTML-unescape twice, strip, then every
  whitespace run -> one space (ftfy e.g. turns the full-width commas of the Chinese negative
  prompt into ','; the ids depend on it, so ftfy is required)."""
  try:
    import ftfy
  except ImportError as e:   # pragma: no cover - depends on the install
    raise ImportError("the umT5 prompt cleaning needs ftfy (pip install ftfy), as the reference does") from e
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip()


@dataclasses.dataclass
class UMT5Tokenizer:
  """prompts -> (ids [B, text_len] int32, mask [B, text_len] int32) as the reference's
  HuggingfaceTokenizer(seq_len=text_len, clean='whitespace') with add_special_tokens:
  clean, encode, keep at most text_len - 1 pieces, append `</s>`, right-pad with `<pad>`.

  `encode` maps one cleaned string to its piece ids without special tokens."""
  encode: Callable[[str], Sequence[int]]
  eos_id: int = EOS_ID
  pad_id: int = PAD_ID
  clean: bool = True

  def __call__(self, prompts: str | Sequence[str], text_len: int = TEXT_LEN):
    if isinstance(prompts, str):
      prompts = [prompts]
    if text_len < 1:
      raise ValueError(f"text_len must be >= 1, got {text_len}")
    ids = np.full((len(prompts), text_len), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), text_len), np.int32)
    for i, p in enumerate(prompts):
      if not isinstance(p, str):
        raise TypeError(f"prompt {i} is {type(p).__name__}, not str")
      toks = list(self.encode(clean_prompt(p) if self.clean else p))[:text_len - 1] + [self.eos_id]
      ids[i, :len(toks)] = toks
      mask[i, :len(toks)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- DiT conditioning


def masked_states(encoder: T5Encoder, ids, mask):
  """Encoder states with the rows past each prompt's length set to zero (= the reference's
  `u[:len]` followed by the DiT's zero padding), float32 statistics, encoder compute dtype."""
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  states = encoder(ids, mask)
  return jnp.where(mask.astype(bool)[..., None], states, jnp.zeros((), states.dtype))


def encode_prompts(encoder: T5Encoder, tokenizer: UMT5Tokenizer, prompts: str | Sequence[str],
                   text_len: int = TEXT_LEN):
  """prompts -> [B, text_len, dim] umT5 states, zero past each prompt's tokens: what the
  LingBot DiT takes as `context` (it zero-pads shorter contexts to its text_len itself, so
  text_len here may also be the encoder's, 512). Prompts longer than text_len - 1 pieces are
  truncated (the last row is `</s>`); an empty prompt is one `</s>` row."""
  ids, mask = tokenizer(prompts, text_len)
  return masked_states(encoder, ids, mask)


def trimmed_states(encoder: T5Encoder, ids, mask) -> list[jax.Array]:
  """The reference's own return value: one [len_i, dim] array per prompt."""
  states = encoder(jnp.asarray(ids), jnp.asarray(mask))
  lens = np.asarray(mask).astype(bool).sum(axis=1)
  return [states[i, :int(n)] for i, n in enumerate(lens)]
