"""Analytic FLOPs of the DiT passes (matmuls + attention), for MFU and planning.

XLA's cost analysis counts a scanned layer body once and custom kernels (splash, cuDNN)
as zero, so throughput figures use these counts instead. Forward only; a training step
(forward + backward) is 3x, plus 1x more when full remat recomputes the forward.
"""
from __future__ import annotations

from wc_jax.models.worldplay.config import DiTConfig


def ar_chunk_flops(cfg: DiTConfig, tokens_per_frame: int, chunk_frames: int, context_frames: int,
                   text_tokens: int, batch: int = 1) -> float:
  """Forward FLOPs of `denoise_chunk` (RoPE + PRoPE branches attend to [text; context; self])."""
  c = cfg.hidden_size
  s = tokens_per_frame * chunk_frames
  keys = text_tokens + context_frames * tokens_per_frame + s
  per_layer = s * (2 * c * c * (3 + 1 + 1) + 2 * 2 * c * cfg.mlp_hidden)   # qkv, proj, prope_proj, mlp
  per_layer += 2 * (4 * s * keys * c)                                      # two branches: QK^T and PV
  cin = cfg.in_channels * int(cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
  io = 2 * s * c * cin + 2 * s * c * cfg.out_channels
  return float(batch * (cfg.depth * per_layer + io))


def full_flops(cfg: DiTConfig, tokens_per_frame: int, frames: int, text_tokens: int, causal: bool = True,
               batch: int = 1) -> float:
  """Forward FLOPs of `forward` over `frames` latents with `text_tokens` conditioning tokens."""
  c = cfg.hidden_size
  s = tokens_per_frame * frames
  dense = s * (2 * c * c * 5 + 4 * c * cfg.mlp_hidden) + text_tokens * (2 * c * c * 4 + 4 * c * cfg.mlp_hidden)
  if causal:
    chunks = -(-frames // cfg.chunk_latents)
    per_chunk = tokens_per_frame * cfg.chunk_latents
    visible = sum(per_chunk * (text_tokens + (i + 1) * per_chunk) for i in range(chunks))
    pairs_rope = visible + text_tokens * text_tokens
    pairs_prope = visible
  else:
    pairs_rope = (s + text_tokens) ** 2
    pairs_prope = s * (s + text_tokens)
  attn = 4 * c * (pairs_rope + pairs_prope)
  cin = cfg.in_channels * int(cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
  io = 2 * s * c * cin + 2 * s * c * cfg.out_channels
  return float(batch * (cfg.depth * (dense + attn) + io))
