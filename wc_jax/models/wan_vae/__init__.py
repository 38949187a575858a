"""Wan2.1 causal 3-D VAE (z16, stride (4, 8, 8)), the VAE of LingBot-World."""
from wc_jax.models.wan_vae.config import WanVAEConfig
from wc_jax.models.wan_vae.model import (Encoded, WanVAE, abstract_model, decode, decode_chunk,
                                         denormalize_latents, encode, encode_all, encode_chunk, init_model,
                                         model_from_params, normalize_latents, param_shapes, param_shardings,
                                         params_of, shard_model, tiled_decode)

__all__ = [
    "Encoded", "WanVAE", "WanVAEConfig", "abstract_model", "decode", "decode_chunk", "denormalize_latents",
    "encode", "encode_all", "encode_chunk", "init_model", "model_from_params", "normalize_latents",
    "param_shapes", "param_shardings", "params_of", "shard_model", "tiled_decode",
]
