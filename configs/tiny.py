"""Tiny config: random-init model that runs in seconds on a laptop CPU.

    python -m wc_jax.train --config=configs/tiny.py --workdir=/tmp/wc_rl
    python -m wc_jax.generate --config=configs/tiny.py --random_conditioning --actions="w-4, right-4" \
        --out=/tmp/wc_tiny/video.mp4
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
      steps=4, shift=5.0, max_context_frames=20, recent_context_frames=12,
      chunks=4, latent_height=4, latent_width=6))

  c.text = ml_collections.ConfigDict(dict(text_tokens=12, byt5_tokens=6, vision_tokens=5))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))

  # ---- RL (python -m wc_jax.train --config=configs/tiny.py --workdir=/tmp/wc_rl)
  c.rl = ml_collections.ConfigDict(dict(
      total_steps=4, trajectories_per_step=1, group_size=12, best_of_n=6, curriculum="min2max", max_clip=4, fixed_clip=1,
      rollout_steps=4, shift=5.0, sigma_fraction=0.5, beta=1.0, adv_clip=2.0, released_v_old=False,
      std_type="global", policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay=0.9))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=1e-4, grad_clip=2.0, grad_accum=1, muon=True, muon_rms=0.2, b1=0.9, b2=0.999))
  c.vae = ml_collections.ConfigDict(dict(checkpoint="", seed=0, block_out_channels=(8, 16, 16, 32, 32),
                                         layers_per_block=1))
  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(dict(fine_action=2.0, drift=1.0))
  c.rewards.pose = ml_collections.ConfigDict(dict(
      checkpoint="", seed=0, process_res=84,
      random=dict(embed_dim=32, depth=4, num_heads=2, out_layers=(0, 1, 2, 3), alt_start=2, qknorm_start=2,
                  rope_start=2, head_features=16, head_out_channels=(8, 16, 32, 64))))
  c.rewards.quality = ml_collections.ConfigDict(dict(   # scorer: "clip" | "hpsv3" (configs/hunyuan8b.py)
      scorer="clip", checkpoint="", head_checkpoint="", seed=0,
      random=dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=16), head_dims=(16, 8, 1))))
  # options for rewards that are off by default (weight 0 / absent): SWIRL's IDM reward and
  # RWML's similarity to the real continuation (needs data with video, e.g. synthetic_world)
  # SWIRL's reward (`idm`): the IDM's log-likelihood of the commanded actions, each step clamped at `floor`
  # (-10, the paper's), e.g. --config.rewards.weights='{"idm": 2.0, "drift": 1.0}'
  c.rewards.idm = ml_collections.ConfigDict(dict(
      checkpoint="", seed=0, widths=(32, 64, 128, 128), hidden=256, floor=-10.0))   # wc_jax.convert.idm.save_idm
  # RWML's reward (`embedding_similarity`, alias `rwml`): cosine similarity of each candidate's window to the
  # real continuation in an embedding space. encoder: "quality" (the CLIP scorer's vision tower) | "pose" (the
  # pose model's DA3 backbone, pooled patch features) | "hpsv3" (HPSv3's vision tower; needs
  # rewards.quality.scorer="hpsv3"); pooling: "frame" (mean per-frame cosine) | "clip" (cosine of the mean
  # embeddings). RWML as in the paper: binarize=True (1.0 at or above `threshold`) and filter_easy=True (a
  # group whose candidates ALL reach easy_threshold, -1 = threshold, is dropped from the ranking), e.g.
  # --config.rewards.weights='{"embedding_similarity": 1.0, "drift": 1.0}' --config.data.source=synthetic_world
  # --config.rewards.similarity.binarize=True --config.rewards.similarity.filter_easy=True
  c.rewards.similarity = ml_collections.ConfigDict(dict(
      encoder="quality", pooling="frame", binarize=False, threshold=0.5, filter_easy=False, easy_threshold=-1.0))
  # SWIRL's alternation (wc_jax.rl.swirl): with enabled=True (and an `idm` reward) the idm reward's IDM is
  # trained on the policy's generations: after every `every` RL steps, `steps` IDM optimizer steps
  # (`batch_size` clips each) on the generations since the last phase, objective "grpo" (SWIRL: the IDM's
  # `samples` sampled actions per step rewarded by agreement with the commanded one) or "supervised"
  # (cross-entropy on the real frames: the baseline; needs data with video). Checkpointed with the run.
  c.swirl = ml_collections.ConfigDict(dict(enabled=False, every=1, steps=4, objective="grpo", lr=1e-4,
                                           batch_size=16, samples=8, seed=0))
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
      every=0, trajectories=2, latents=8, steps=4, seed=1234, source="synthetic", split="eval"))
  c.checkpoint = ml_collections.ConfigDict(dict(every=2, keep=3, async_save=True))
  # profile_steps=(k, n): a jax.profiler trace of steps k..k+n-1 in WORKDIR/profile (n=0: off)
  c.logging = ml_collections.ConfigDict(dict(video_every=2, progress=True, profile_steps=(0, 0)))
  return c
