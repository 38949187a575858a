"""Tiny config: random-init model that runs in seconds on a laptop CPU.

    python -m wc_jax.generate --config=configs/tiny.py --workdir=/tmp/wc_tiny
    python -m wc_jax.generate --config=configs/tiny.py --config.sampling.steps=4
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      latent_channels=4, out_channels=4, patch_size=(1, 1, 1), hidden_size=64, heads=2, depth=2,
      mlp_ratio=4.0, rope_dims=(8, 12, 12), rope_theta=256.0, qkv_bias=True, text_dim=32,
      refiner_depth=2, byt5_in_dim=24, byt5_hidden_dim=48, byt5_out_dim=48, vision_dim=40,
      chunk_latents=4, context_timestep=14.0, dtype="float32", param_dtype="float32",
      attention_impl="xla", attention_block_kv=1024, remat_policy="full"))
  c.model.checkpoint = ""            # optional: wc_jax Orbax checkpoint folder (python -m wc_jax.convert)
  c.model.init = "random"            # "reference" zero-inits output layers (a fresh model predicts v = 0)

  c.sampling = ml_collections.ConfigDict(dict(
      steps=4, shift=5.0, max_context_frames=20, recent_context_frames=12, context_policy="fov",
      chunks=4, latent_height=4, latent_width=6))

  c.text = ml_collections.ConfigDict(dict(text_tokens=12, byt5_tokens=6, vision_tokens=5))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
  return c
