"""LingBot-World-Base (Cam) on Wan2.2 i2v-A14B: the released model's numbers.

Two experts, each a full Wan2.2 14B DiT + LingBot's camera layers (wc_jax.models.lingbot):
dim 5120, ffn 13824, 40 heads x 128, 40 layers, patch (1,2,2), freq_dim 256, eps 1e-6,
qk-norm + cross-attn norm; in 36 = 16 noise + 4 mask + 16 image latent, out 16; text umT5-XXL
(4096-d) zero-padded to 512 rows, all attended (wan/configs/wan_i2v_A14B.py, shared_config.py,
the Wan2.2-I2V-A14B config). The high-noise expert serves t >= 947 (boundary 0.947), the
low-noise one below. Sampling: UniPC bh2 order 2 (x0-prediction), 70 steps, shift 10 (the
reference recommends 3.0 for 480p), CFG 5.0 on both experts, the camera in both branches.
Video: 480x832 (also 832x480, 720x1280, 1280x720), 81 frames by default (4k+1), VAE Wan2.1
(z 16, stride 4x8x8), so 21 x 60 x 104 latents -> 21*30*52 = 32760 tokens.

Not known offline / not set here: the checkpoint paths (HF robbyant/lingbot-world-base-cam,
`high_noise_model/`, `low_noise_model/`, converted with wc_jax.convert.lingbot, and
`Wan2.1_VAE.pth`; python -m wc_jax.generate refuses to run this config on random weights), the mesh and
execution choices for a given TPU/GPU slice (the values below are starting points), and the
negative prompt text (shared_config.py's sample_neg_prompt; its umT5 states come from the text encoder).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = "lingbot"     # which world model: python -m wc_jax.generate dispatches on it (absent: worldplay)
  c.seed = 0

  # wc_jax.models.lingbot.config.LingBotConfig fields (one expert; both share them)
  c.model = ml_collections.ConfigDict(dict(
      patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=5120, ffn_dim=13824, freq_dim=256, text_dim=4096,
      out_dim=16, num_heads=40, num_layers=40, eps=1e-6, rope_theta=10000.0, camera_channels=384,
      dtype="bfloat16", param_dtype="float32", attention_impl="splash", attention_block_kv=1024,
      remat_policy="full"))
  c.model.checkpoint_high = ""     # wc_jax Orbax folder converted from high_noise_model/
  c.model.checkpoint_low = ""      # ... from low_noise_model/

  # wc_jax.models.wan_vae.config.WanVAEConfig fields: the released Wan2.1 VAE (z 16, stride 4x8x8;
  # the latent constants default to the released 16-channel ones); float32 as the reference runs it
  c.vae = ml_collections.ConfigDict(dict(
      dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
      temperal_downsample=(False, True, True), dropout=0.0, dtype="float32", param_dtype="float32",
      checkpoint=""))               # Wan2.1_VAE.pth of the release, or a folder from python -m wc_jax.convert

  c.sampling = ml_collections.ConfigDict(dict(
      solver="unipc", steps=70, shift=10.0, guide_scale=(5.0, 5.0),   # (low, high)
      boundary=0.947, num_train_timesteps=1000, frame_num=81, height=480, width=832,
      latent_channels=16, vae_stride=(4, 8, 8)))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
  return c
