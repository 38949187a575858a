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
      steps=40, shift=5.0, max_context_frames=20, recent_context_frames=12,
      chunks=16, latent_height=30, latent_width=52))

  c.text = ml_collections.ConfigDict(dict(text_tokens=1000, byt5_tokens=256, vision_tokens=729))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))

  # ---- WorldCompass RL (the released training configuration)
  c.rl = ml_collections.ConfigDict(dict(
      total_steps=100, group_size=12, best_of_n=6, curriculum="min2max", max_clip=16, fixed_clip=1,
      rollout_steps=40, shift=5.0, sigma_fraction=0.5, beta=1.0, adv_clip=2.0, released_v_old=False,
      std_type="global", policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay=0.9))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=1e-4, grad_clip=2.0, grad_accum=2, muon=True, muon_rms=0.2, b1=0.9, b2=0.999))
  c.vae = ml_collections.ConfigDict(dict(checkpoint="", seed=0, block_out_channels=(128, 256, 512, 1024, 1024),
                                         layers_per_block=2))   # checkpoint: converted HunyuanVideo-1.5 vae/
  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(dict(fine_action=2.0, drift=1.0))
  c.rewards.pose = ml_collections.ConfigDict(dict(checkpoint="", seed=0, process_res=504,
                                                  random=dict(embed_dim=1024, depth=24, num_heads=16)))
  c.rewards.quality = ml_collections.ConfigDict(dict(
      checkpoint="", head_checkpoint="", seed=0,
      random=dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768), head_dims=(768, 1024, 128, 64, 16, 1))))
  # trajectories (wc_jax/rl/data_source.py): synthetic_latents | records | synthetic_world
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic_latents",   # records: a TFDS set at `path` (python -m wc_jax.data.write_records)
      path="", split="train",       # path = wc_jax.data.tfds_builder.dataset_dir(data_dir, name)
      seed=0, shuffle=True, num_epochs=0,   # 0 = repeat forever; a finite stream ends the run
      worker_count=0, read_threads=0,       # grain decode/render processes, prefetch threads
      first_latent="pooled"))       # synthetic_world: "pooled" stand-in | "vae" (encode frame 0 with c.vae)
  c.data.synthetic = ml_collections.ConfigDict(dict(   # synthetic_world; 0 = latent grid x VAE factor
      num_examples=64, num_scenes=4, scene_seed=0, trajectory_seed=0, height=0, width=0, supersample=1))
  # multi-host (wc_jax/distributed.py): auto = only on a multi-host TPU slice or num_processes > 1
  c.distributed = ml_collections.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0, process_id=-1, local_device_ids="",
      initialization_timeout=300))
  c.checkpoint = ml_collections.ConfigDict(dict(every=10, keep=3, async_save=True))
  c.logging = ml_collections.ConfigDict(dict(video_every=10, progress=True))
  return c
