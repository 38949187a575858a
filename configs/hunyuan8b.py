"""WorldPlay on HunyuanVideo-1.5 8B (480p i2v): the reference model's exact numbers.

hidden 2048, 16 heads x 128, 54 double-stream blocks, MLP x4 gelu_tanh, RoPE [16,56,56]
theta 256, Qwen2.5-VL text (3584-d), ByT5 (1472-d), SigLIP (1152-d), 32 latent channels,
480x832 video -> 30x52 latent tokens per frame, chunks of 4 latents, <= 20 context latents.
Rollouts: 40 Euler steps at shift 5, no CFG.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      latent_channels=32, out_channels=32, patch_size=(1, 1, 1), hidden_size=2048, heads=16, depth=54,
      mlp_ratio=4.0, rope_dims=(16, 56, 56), rope_theta=256.0, qkv_bias=True, text_dim=3584,
      refiner_depth=2, byt5_in_dim=1472, byt5_hidden_dim=2048, byt5_out_dim=2048, vision_dim=1152,
      chunk_latents=4, context_timestep=14.0, dtype="bfloat16", param_dtype="float32",
      attention_impl="splash", attention_block_kv=1024, remat_policy="full"))
  c.model.checkpoint = ""            # wc_jax Orbax checkpoint converted from ar_model/diffusion_pytorch_model
  c.model.init = "reference"

  c.sampling = ml_collections.ConfigDict(dict(
      steps=40, shift=5.0, max_context_frames=20, recent_context_frames=12, context_policy="fov",
      chunks=16, latent_height=30, latent_width=52))

  c.text = ml_collections.ConfigDict(dict(text_tokens=1000, byt5_tokens=256, vision_tokens=729))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
  return c
