"""The CPU reproduction in the synthetic world (issue 6): a tiny WorldPlay DiT on a fixed
patch latent of 24x24 frames, trained with the base objective, then WorldCompass RL with an
IDM reward and a drift term.

    python benchmarks/reproduce.py                      # everything, prints the table
    python -m wc_jax.world.base_train --config=configs/synthetic.py --workdir=/tmp/wc_world/base
    python benchmarks/reproduce.py --config=configs/synthetic.py:lowpass --gates_only   # a variant

Variants (docs/reproduction.md, "capability ablations"): "" (the default world), "panel" (panelled
walls and stronger sky bands: turns visible), "lowpass" (panel + a 2x2-DCT low-pass world and
12-channel latent, 13 500 base steps as three warm-restart cosine cycles, peaks 3e-3 / 2e-3 /
1e-3: the best base recipe measured so far, committed as benchmarks/assets/synthetic_base_seed0;
66 % exact at 1x, all primitives >= 40 % except strafe-left, 32 % on 25 steps).
"""
import ml_collections

VARIANTS = ("", "panel", "lowpass")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  variant = variant or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/synthetic.py: unknown variant {variant!r}; choose from {VARIANTS[1:]}")
  c = ml_collections.ConfigDict()
  c.seed = 0

  # 24x24 frames (2x2 rays per pixel), patch 4 -> 48-channel 6x6 latents (36 DiT tokens), one
  # latent per frame. A latent turns 15 degrees (about one 4-pixel token at focal 0.6) or
  # moves 0.5, so copying the last frame is a poor answer; detail 0 renders the scenes
  # with smooth surfaces (same layout, 3x wider floor checkers) that the tiny DiT can
  # generate. "global" latent scale: one std for all DCT channels, so the noise is
  # isotropic in pixels and the loss weights detail by its energy (per-channel
  # standardisation made unpredictable texture frequencies dominate the loss and the
  # samples noisy). Tokens carry 48 values, well under hidden_size.
  c.world = ml_collections.ConfigDict(dict(
      height=24, width=24, focal=0.6, step=0.5, angle_deg=15.0, min_segment=2, max_segment=6,
      max_pitch_deg=30.0, detail=0.0, patch=4, supersample=2, latent_scale="global",
      lowpass=0,                                       # > 0: keep lowpass^2 DCT frequencies per patch (lossy latent)
      wall_panel=0.0, sky_contrast=0.15,                # panelled walls (> 0), sky band amplitude: the :panel variant
      train_scenes=(0, 400), judge_scenes=(20000, 20400), eval_scenes=(10000, 10064),  # [first, last)
      train_clips=1200, train_latents=12, idm_clips=1200))

  c.model = ml_collections.ConfigDict(dict(
      latent_channels=48, out_channels=48, patch_size=(1, 1, 1), hidden_size=96, heads=3, depth=2,
      mlp_ratio=4.0, rope_dims=(8, 12, 12), rope_theta=256.0, qkv_bias=True, text_dim=32,
      refiner_depth=1, byt5_in_dim=24, byt5_hidden_dim=48, byt5_out_dim=48, vision_dim=40,
      chunk_latents=4, context_timestep=14.0, dtype="float32", param_dtype="float32",
      attention_impl="xla", attention_block_kv=1024, remat_policy="none"))
  c.model.checkpoint = ""            # set by the reproduction to the base model
  c.model.init = "reference"

  # Base training: v-prediction (target eps - x0), chunk-causal, per-chunk logit-normal
  # sigmas with shift 3 (the reference's objective).
  c.base = ml_collections.ConfigDict(dict(
      steps=3000, batch_size=8, lr=1e-3, warmup=100, weight_decay=1e-4, grad_clip=1.0, timestep_shift=3.0,
      clean_context_prob=0.5, label_noise=0.0, corrupt_poses=False, log_every=50, ema_decay=0.995,
      snapshot_every=0, init="", restarts=""))
  # restarts "steps:lr,...": warm-restart cosine cycles covering base.steps (a long base in one run).
  # init: a base's model/ folder to continue (staged training; its latent.json beside it).
  # snapshot_every > 0: EMA weights every that many steps in WORKDIR/snapshots/step<N> (judge a long run midway).
  # label_noise > 0 shows a fraction of chunks another clip's labels (mislabelled data), with
  # corrupt_poses its camera poses too (setting (b) of the study); 0 is the reference objective.

  # memory 4 + recent 4: chunk n >= 3 sees the first chunk and the 4 latents before it,
  # the positions base training covers (12 latents).
  c.sampling = ml_collections.ConfigDict(dict(
      steps=8, shift=3.0, max_context_frames=4, recent_context_frames=4,
      chunks=3, latent_height=6, latent_width=6))

  c.text = ml_collections.ConfigDict(dict(text_tokens=8, byt5_tokens=4, vision_tokens=4))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))

  c.idm = ml_collections.ConfigDict(dict(widths=(32, 64, 96), hidden=128, steps=500, batch_size=16, lr=2e-3,
                                         reward_seed=1, eval_seed=2))

  # 8 trajectories (groups of G = 12) per step, advantages z-scored with one std pooled over
  # all 96 candidates ("global"), one update per step: 100 updates, 800 trajectories. (One
  # group per update made the gradient too noisy to move the policy, and a per-group std
  # gives groups where no candidate follows the command unit-variance advantages.)
  c.rl = ml_collections.ConfigDict(dict(
      total_steps=100, trajectories_per_step=8, group_size=12, best_of_n=6, curriculum="min2max", max_clip=2, fixed_clip=1,
      rollout_steps=8, shift=3.0, sigma_fraction=0.5, beta=1.0, adv_clip=2.0, released_v_old=False,
      std_type="global", policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay=0.9))
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-4, weight_decay=1e-4, grad_clip=2.0, grad_accum=1, muon=False, muon_rms=0.2, b1=0.9, b2=0.999))
  c.rewards = ml_collections.ConfigDict()
  c.rewards.weights = ml_collections.ConfigDict(dict(idm=2.0, drift=1.0))
  # RWML (rewards.weights.rwml > 0; the study's `rwml` / `wc+rwml` arms): cosine similarity of each
  # candidate's new frames to the world's true continuation in a fixed embedding space (random_conv
  # | pixels), 1.0 at or above `threshold`; a group whose candidates ALL reach easy_threshold (-1:
  # = threshold) is dropped from the ranking when filter_easy. wc_jax.world.reward.rwml_options.
  # threshold 0.93: the median similarity of the committed base's own 4-latent continuations on
  # training scenes (quartiles 0.90 / 0.96); at 0.7 every candidate was "real" and every group easy.
  # metric "psnr": the pixel PSNR (dB) to the real frames instead of the embedding's cosine (the
  # study's `rwml_psnr` arm; thresholds then in dB).
  c.rewards.rwml = ml_collections.ConfigDict(dict(encoder="random_conv", threshold=0.93, binarize=True,
                                                  filter_easy=True, easy_threshold=-1.0, seed=0, metric="cosine"))
  # SWIRL's alternation (the study's `swirl_alt` arm): after every `every` RL steps, `steps` IDM
  # updates on the policy's generations since the last phase, objective "grpo" (SWIRL: reward =
  # agreement of the IDM's sampled actions with the commanded ones) or "supervised" (cross-entropy
  # on the real frames: the baseline). wc_jax.rl.swirl.
  c.swirl = ml_collections.ConfigDict(dict(enabled=False, every=1, steps=4, objective="grpo", lr=1e-4,
                                           batch_size=16, samples=8, seed=0))

  # Held-out evaluation (benchmarks/reproduce.py --eval_seed picks the scenes, trajectories and
  # noises): 64 trajectories at 1x, 2x, 4x the RL horizon.
  c.eval = ml_collections.ConfigDict(dict(trajectories=64, horizons=(1, 2, 4)))
  # The study's baselines: best-of-G by reward at inference (G = the RL group size), supervised
  # fine-tuning on clean ground truth for the RL run's wall time (at most sft_max_steps, lr
  # sft_lr), n_boot bootstrap draws for the CIs; setting (b) (--corrupt=p) first trains the base
  # corrupt_steps more steps with labels and poses corrupted for a fraction p of chunks.
  c.study = ml_collections.ConfigDict(dict(best_of=12, sft_lr=2e-4, sft_max_steps=20000, n_boot=2000,
                                           corrupt_steps=1000))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=1, async_save=False))
  # profile_steps=(k, n): a jax.profiler trace of steps k..k+n-1 in WORKDIR/profile (n=0: off)
  c.logging = ml_collections.ConfigDict(dict(video_every=0, progress=False, profile_steps=(0, 0)))
  if variant in ("panel", "lowpass"):
    c.world.wall_panel, c.world.sky_contrast = 1.5, 0.5
  if variant == "lowpass":
    c.world.lowpass = 2
    c.model.latent_channels = c.model.out_channels = 12
    c.base.lr = 3e-3
    c.base.steps, c.base.restarts = 13500, "4500:3e-3,6000:2e-3,3000:1e-3"
  return c
