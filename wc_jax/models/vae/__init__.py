"""HunyuanVideo-1.5 causal 3-D VAE (32 latent channels, 16x spatial, 4x temporal)."""
from wc_jax.models.vae.config import VAEConfig
from wc_jax.models.vae.model import (AutoencoderKL, Posterior, decode, decode_chunk, encode, encode_chunk,
                                     init_model, model_from_params, param_shardings, params_of,
                                     scale_latents, shard_model, tiled_decode, unscale_latents)

__all__ = [
    "AutoencoderKL", "Posterior", "VAEConfig", "decode", "decode_chunk", "encode", "encode_chunk",
    "init_model", "model_from_params", "param_shardings", "params_of", "scale_latents",
    "shard_model", "tiled_decode", "unscale_latents",
]
