"""LingBot-World at toy width for CPU tests and demos: the shapes of the reference fixtures.

DiT (tests/fixtures/lingbot/dit/config.json): dim 64, 2 heads, 2 layers, ffn 128, freq_dim 32,
text_dim 32, text_len 16, in 12 = 4 noise + 4 mask + 4 image latent, out 4, patch (1,2,2).
VAE (tests/fixtures/lingbot/vae/config.json): Wan2.1 layout at dim 8, z 4 (stride 4x8x8), the
latent constants are the released ones' first 4 channels. Video 9 frames of 32x64 -> latents
[4, 3, 4, 8] (the DiT fixture's grid); sampling as the fixture's rollout: UniPC 4 steps,
shift 10, CFG 5/5, boundary 0.947 (steps 999, 967 on the high-noise expert, 908, 768 on the low).

Weights: empty checkpoints give random experts / VAE (seeded from `seed`); to run the fixture's
own weights pass the modules to wc_jax.inference.lingbot.build_pipeline (see
tests/test_lingbot_pipeline.py), or point the checkpoints at converted folders.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = "lingbot"     # which world model: python -m wc_jax.generate dispatches on it (absent: worldplay)
  c.seed = 0

  # wc_jax.models.lingbot.config.LingBotConfig fields (one expert; both share them)
  c.model = ml_collections.ConfigDict(dict(
      patch_size=(1, 2, 2), text_len=16, in_dim=12, dim=64, ffn_dim=128, freq_dim=32, text_dim=32,
      out_dim=4, num_heads=2, num_layers=2, eps=1e-6, rope_theta=10000.0, camera_channels=384,
      dtype="float32", param_dtype="float32", attention_impl="xla", attention_block_kv=1024,
      remat_policy="none"))
  c.model.checkpoint_high = ""     # wc_jax folder (python -m wc_jax.convert) or reference expert folder
  c.model.checkpoint_low = ""

  # the prompt encoder: umT5 at the fixture's toy size (tests/fixtures/encoders/umt5: dim 32 = the DiT's
  # text_dim, its tiny tokenizer; paths relative to the repository root), text_len = the DiT's
  c.text_encoder = ml_collections.ConfigDict(dict(
      kind="umt5",
      checkpoint="tests/fixtures/encoders/umt5/weights.safetensors",
      tokenizer="tests/fixtures/encoders/umt5/tokenizer",
      text_len=16, dtype="float32", param_dtype="float32",
      arch=dict(vocab=300, dim=32, dim_attn=48, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32,
                shared_pos=False),
      negative_prompt="色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"))

  # wc_jax.models.wan_vae.config.WanVAEConfig fields (+ checkpoint: folder or Wan2.1_VAE.pth)
  c.vae = ml_collections.ConfigDict(dict(
      dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
      temperal_downsample=(False, True, True), dropout=0.0, dtype="float32", param_dtype="float32",
      checkpoint=""))

  c.sampling = ml_collections.ConfigDict(dict(
      solver="unipc", steps=4, shift=10.0, guide_scale=(5.0, 5.0),   # (low, high)
      boundary=0.947, num_train_timesteps=1000, frame_num=9, height=32, width=64,
      latent_channels=4, vae_stride=(4, 8, 8)))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))

  # ---- WorldCompass RL on LingBot-World (python -m wc_jax.train; wc_jax/rl/lingbot.py), sized for a CPU:
  # per step one example, G=4 whole-clip candidates (2 kept), 4 sampler steps (2 on each expert), the
  # low-noise expert trained at 1 of its 2 rollout sigmas per kept sample
  c.rl = ml_collections.ConfigDict(dict(
      total_steps=4, expert="low", group_size=4, best_of_n=2, rollout_steps=4, shift=10.0, sigma_fraction=0.5,
      beta=1.0, adv_clip=2.0, policy_ema_decay=0.9, std_type="global", released_v_old=False))
  c.optim = ml_collections.ConfigDict(dict(lr=1e-4, weight_decay=1e-4, grad_clip=2.0, b1=0.9, b2=0.999))
  # camera following (DA3 poses vs the commanded path: labels + accuracies, rotation / translation error)
  # and quality drift; random toy reward models here (checkpoints: converted DA3 / CLIP-aesthetic folders)
  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(dict(
      fine_action=2.0, camera_rotation=0.5, camera_translation=0.5, drift=1.0))
  c.rewards.pose = ml_collections.ConfigDict(dict(
      checkpoint="", seed=0, process_res=84,
      random=dict(embed_dim=32, depth=4, num_heads=2, out_layers=(0, 1, 2, 3), alt_start=2, qknorm_start=2,
                  rope_start=2, head_features=16, head_out_channels=(8, 16, 32, 64))))
  c.rewards.quality = ml_collections.ConfigDict(dict(
      scorer="clip", checkpoint="", head_checkpoint="", seed=0,
      random=dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=16), head_dims=(16, 8, 1))))
  # examples: the synthetic world rendered at sampling.height x width along one held camera motion
  # (step per latent, degrees per latent), fixed random prompt states at text_dim
  c.data = ml_collections.ConfigDict(dict(source="synthetic_world", seed=0, synthetic=dict(
      num_examples=16, num_scenes=4, scene_seed=0, step=0.25, angle_deg=6.0, focal=0.6, supersample=1)))
  c.checkpoint = ml_collections.ConfigDict(dict(every=2, keep=3, async_save=True))
  c.logging = ml_collections.ConfigDict(dict(video_every=2, progress=False, profile_steps=(0, 0)))
  return c
