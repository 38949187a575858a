"""WorldPlay on HunyuanVideo-1.5 8B (480p i2v): the reference model's exact numbers.

hidden 2048, 16 heads x 128, 54 double-stream blocks, MLP x4 gelu_tanh, RoPE [16,56,56]
theta 256, Qwen2.5-VL text (3584-d), ByT5 (1472-d), SigLIP (1152-d), 32 latent channels,
480x832 video -> 30x52 latent tokens per frame, chunks of 4 latents, <= 20 context latents.
Rollouts: 40 Euler steps at shift 5, no CFG.

Variants (`--config=configs/hunyuan8b.py:NAME`):
  (none)    the paper's algorithm (the NFT loss with the rollout policy's true v_old) with every
            other setting as the released training code (docs/rl.md lists each one);
  released  the released code number by number, including its v_old overwrite (the loss becomes
            advantage-weighted x0 regression).
"""
import ml_collections

VARIANTS = ("", "paper", "released")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  variant = variant or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/hunyuan8b.py: unknown variant {variant!r}; choose from {VARIANTS[1:]}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.allow_random_init = False     # True: run without checkpoints on purpose (smoke tests of the full size)

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

  # chosen with `python -m wc_jax.plan` (docs/performance.md): the 12 candidates and the kept samples
  # over data=2 (2 divides both 12 and 6), the 16 heads (and the MLP) over tensor=16, the chunk's
  # tokens over context = the rest (v5p-32: 1, v5p-64: 2, v5p-128: 4); caches split by heads
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=1, context=-1, tensor=16))

  # ---- WorldCompass RL (the released training configuration; docs/rl.md sources every value)
  # 8 trajectories per step = the released run's 8 ranks x 1; a multiple of the process count
  # (on more than 8 hosts set --config.rl.trajectories_per_step to a multiple of the host count)
  c.rl = ml_collections.ConfigDict(dict(
      total_steps=100, trajectories_per_step=8, group_size=12, best_of_n=6, curriculum="min2max", max_clip=16,
      fixed_clip=1, rollout_steps=40, shift=5.0, sigma_fraction=0.5, beta=1.0, adv_clip=2.0,
      released_v_old=variant == "released",
      std_type="global", policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay=0.9,
      # the released step: gradient accumulation 2 over the 6 kept samples = 3 optimizer steps per
      # RL step; loss summed over the sampled sigmas, each sample its own subset; int(sigma*1000)
      # timesteps; policy-EMA decay counted in RL steps; reward window [latent 0, 2 previous, new]
      samples_per_optimizer_step=2, per_sample_sigmas=True, sigma_reduction="sum", int_timesteps=True,
      ema_clock="rl", reward_window="released"))
  c.optim = ml_collections.ConfigDict(dict(   # accumulation is inside the step (samples_per_optimizer_step)
      lr=1e-5, weight_decay=1e-4, grad_clip=2.0, grad_accum=1, muon=True, muon_rms=0.2, b1=0.9, b2=0.999))
  c.vae = ml_collections.ConfigDict(dict(checkpoint="", seed=0, block_out_channels=(128, 256, 512, 1024, 1024),
                                         layers_per_block=2))   # checkpoint: converted HunyuanVideo-1.5 vae/
  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(dict(fine_action=2.0, drift=1.0))
  c.rewards.pose = ml_collections.ConfigDict(dict(checkpoint="", seed=0, process_res=504,
                                                  random=dict(embed_dim=1024, depth=24, num_heads=16)))
  # the drift reward's scorer: "hpsv3" (the paper's, options in c.rewards.hpsv3) or "clip" (light option below)
  c.rewards.quality = ml_collections.ConfigDict(dict(
      scorer="hpsv3", checkpoint="", head_checkpoint="", seed=0,
      random=dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768), head_dims=(768, 1024, 128, 64, 16, 1))))
  c.rewards.hpsv3 = ml_collections.ConfigDict(dict(   # checkpoint: Qwen2-VL config.json + HPSv3.safetensors
      checkpoint="", tokenizer="", prompt="A high-quality, ultra-detailed and well-structured image.",
      dtype="bfloat16", attention_impl="xla", remat_policy="none", pixels=200704, batch_size=0, seed=0))
  # options for rewards that are off by default (weight 0 / absent): SWIRL's IDM reward and
  # RWML's similarity to the real continuation (needs data with video, e.g. synthetic_world)
  c.rewards.idm = ml_collections.ConfigDict(dict(
      checkpoint="", seed=0, widths=(32, 64, 128, 128), hidden=256, floor=-10.0))   # wc_jax.convert.idm.save_idm
  # encoder: hpsv3 = HPSv3's vision tower (this config's scorer) | pose = the DA3 backbone | quality =
  # the CLIP scorer's tower (only with quality.scorer="clip"); RWML proper: binarize + filter_easy
  c.rewards.similarity = ml_collections.ConfigDict(dict(
      encoder="hpsv3", pooling="frame", binarize=False, threshold=0.5, filter_easy=False, easy_threshold=-1.0))
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
  # evaluation during training (wc_jax/rl/evaluation.py; the reference's _eval: checkpoint EMA, 32 latents,
  # 20 steps, at step 1 and every 6): held-out trajectories, every clip scored by the run's rewards
  c.evaluation = ml_collections.ConfigDict(dict(
      every=6, trajectories=8, latents=32, steps=20, seed=1234, source="synthetic", split="eval"))
  c.checkpoint = ml_collections.ConfigDict(dict(every=6, keep=3, async_save=True))   # released: every 6 steps
  # profile_steps=(k, n): a jax.profiler trace of steps k..k+n-1 in WORKDIR/profile (n=0: off)
  c.logging = ml_collections.ConfigDict(dict(video_every=10, progress=True, profile_steps=(0, 0)))
  return c
