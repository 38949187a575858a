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

  # the prompt encoder: umT5-XXL (wan/modules/t5.py umt5_xxl, bf16 as the release runs it); prompts ->
  # DiT context with wc_jax.convert.encoders.umt5_from_config(c.text_encoder) and
  # wc_jax.models.encoders.umt5.encode_prompts(encoder, tokenizer, prompts, text_len)
  c.text_encoder = ml_collections.ConfigDict(dict(
      kind="umt5",
      checkpoint="",     # the release's models_t5_umt5-xxl-enc-bf16.pth (or a folder from python -m wc_jax.convert)
      tokenizer="",      # the release's google/umt5-xxl folder (tokenizer.json / spiece.model)
      text_len=512, dtype="bfloat16", param_dtype="bfloat16",
      arch=dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
                num_buckets=32, shared_pos=False),
      # wan/configs/shared_config.py sample_neg_prompt (the CFG negative branch)
      negative_prompt="色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"))

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

  # ---- WorldCompass RL on LingBot-World (no released numbers: WorldCompass's where they carry over).
  # The rollout unit is a whole clip; `expert` is the trained one (low: t < boundary). The update
  # (python -m wc_jax.plan --path=update) holds fp32 master weights, AdamW moments and a policy-EMA
  # copy (the rollout policy, whose velocity is the NFT loss's v_old).
  # (no curriculum / clip keys: the model is bidirectional, every rollout is one whole clip)
  c.rl = ml_collections.ConfigDict(dict(
      expert="low", group_size=12, best_of_n=6, rollout_steps=40, shift=10.0, sigma_fraction=0.5, beta=1.0,
      adv_clip=2.0, policy_ema_decay=0.9))
  c.optim = ml_collections.ConfigDict(dict(lr=1e-5, weight_decay=1e-4, grad_clip=2.0, b1=0.9, b2=0.999))
  return c
