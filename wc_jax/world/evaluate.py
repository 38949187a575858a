"""Before/after evaluation: batched autoregressive rollouts from held-out scenes, scored by
an IDM that the RL never saw, at 1x, 2x and 4x the RL training horizon.

Why an IDM as the judge: generated frames have no ground-truth pose, and the
renderer's depth does not exist for them, so a pose estimate would need a trained
pose network. An inverse-dynamics model trained on ground truth from another seed and
other scenes than the reward's IDM is the practical independent judge.

Metrics per horizon H (latents 1..H-1 of each video; latent 0 is the given frame):
  fine   mean of translation-label and rotation-label accuracy (the paper's fine action)
  exact  81-way label accuracy
  psnr   PSNR (dB) to the ground-truth render at the commanded poses (sim-to-real gap)
  detail Q(generated) / Q(ground truth), Q = mean gradient magnitude (1 = as detailed)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.inference import RETRIEVAL_POINTS, ChunkEngine, i2v_condition
from wc_jax.actions import split_action
from wc_jax.world import data as D
from wc_jax.world import judge as J
from wc_jax.world.base_train import encode_text_tokens, scene_range, world_config
from wc_jax.world.reward import predicted_actions, sharpness


def eval_clips(cfg, seed: int, num: int, latents: int) -> D.Clips:
  """Held-out eval set of `seed`: eval scenes, trajectory seeds disjoint from training."""
  scenes = list(scene_range(cfg.world.eval_scenes))
  rng = np.random.default_rng([seed, 0xE7A1])
  pick = rng.choice(len(scenes), num, replace=len(scenes) < num)
  return D.make_clips(num, latents, [scenes[i] for i in pick], 10_000_000 + 1000 * seed, world_config(cfg))


@functools.lru_cache(maxsize=16)
def _engine(apply, chunk: int, steps: int, shift: float, memory: int, recent: int, context_timestep: float,
            points: int) -> ChunkEngine:
  return ChunkEngine(apply, chunk=chunk, steps=steps, shift=shift, memory_frames=memory, recent=recent,
                     context_timestep=context_timestep, retrieval_points=points)


def engine_for(apply, cfg) -> ChunkEngine:
  """The chunk engine of (apply, cfg.sampling), built once per model function and settings,
  so every evaluation of a model (every weight version, every batch of one shape) shares
  its compiled programs. Retrieval uses the reference's RETRIEVAL_POINTS unless
  cfg.sampling.retrieval_points says otherwise."""
  s, m = cfg.sampling, cfg.model
  return _engine(apply, int(m.chunk_latents), int(s.steps), float(s.shift), int(s.max_context_frames),
                 int(s.recent_context_frames), float(m.context_timestep),
                 int(s.get("retrieval_points", RETRIEVAL_POINTS)))


_encode_tokens = jax.jit(encode_text_tokens, static_argnums=(0,))


def text_cache(engine: ChunkEngine, params, cfg):
  """The batch-1 text cache of the world's fixed conditioning (shared by every clip)."""
  states = {k: jnp.asarray(v) for k, v in D.conditioning(cfg.model, cfg.text).items()}
  return engine.encode_text(params, _encode_tokens(engine.apply, params, states))


def generate_latents(engine: ChunkEngine, params, tc, first, actions, w2c, Ks, noise) -> jax.Array:
  """[b, C, T, h, w]: AR generation from first-frame latents `first` [b, C, h, w] and initial
  `noise` [b, C, T, h, w] along actions [b, T] / w2c [b, T, 4, 4] / Ks [b, T, 3, 3]. Context
  retrieval uses the first row's poses for the whole batch."""
  t = noise.shape[2]
  out = engine.generate(params, latents=noise, cond=i2v_condition(first, t), viewmats=w2c, Ks=Ks, action=actions,
                        text_cache=tc, w2c=np.asarray(w2c[0]))
  return out.latents


def rollout(apply, params, cfg, latent, clips: D.Clips, seed: int, batch: int = 16) -> np.ndarray:
  """AR-generates every clip from its first frame (no CFG); returns frames [N, L, H, W, 3].

  Runs through `engine_for(apply, cfg)`, so every model and batch of one shape shares
  compiled programs. Context retrieval uses the first clip's poses for the whole batch; with
  memory = recent (configs/synthetic.py) the choice does not depend on poses at all.
  """
  engine = engine_for(apply, cfg)
  tc = text_cache(engine, params, cfg)
  out = []
  n, t = clips.actions.shape
  for a0 in range(0, n, batch):
    sl = slice(a0, a0 + batch)
    b = len(clips.actions[sl])
    first = latent.encode(clips.frames[sl, :1])[:, :, 0]                          # [b, C, h, w]
    key = jax.random.fold_in(jax.random.key(seed), a0)
    noise = jax.random.normal(key, (b, first.shape[1], t) + first.shape[2:])
    lat = generate_latents(engine, params, tc, first, clips.actions[sl], clips.w2c[sl], clips.Ks[sl], noise)
    out.append(np.asarray(latent.decode(lat)))
  return np.concatenate(out)


def score(frames: np.ndarray, clips: D.Clips, judge, horizons) -> dict:
  """Metrics at each horizon (in latents) of generated frames [N, L, H, W, 3]."""
  pred = np.asarray(predicted_actions(judge, jnp.asarray(frames)))               # [N, L-1]
  want = clips.actions[:, 1:]
  pt, pr = split_action(pred)
  wt, wr = split_action(want)
  mse = ((frames - clips.frames) ** 2).mean((2, 3, 4))                            # [N, L]
  q_gen = np.asarray(sharpness(jnp.asarray(frames)))
  q_gt = np.asarray(sharpness(jnp.asarray(clips.frames)))
  out = {}
  for h in horizons:
    k = h - 1
    out[h] = dict(
        fine=100 * float(np.mean(0.5 * (pt[:, :k] == wt[:, :k]) + 0.5 * (pr[:, :k] == wr[:, :k]))),
        exact=100 * float(np.mean(pred[:, :k] == want[:, :k])),
        psnr=float(np.mean(-10 * np.log10(np.maximum(mse[:, 1:h], 1e-10)))),
        detail=float(np.mean(q_gen[:, 1:h]) / np.mean(q_gt[:, 1:h])))
  return out


def judge_on_ground_truth(clips: D.Clips, judge, horizons) -> dict:
  """The judge's own accuracy on the ground-truth videos: the ceiling of the table."""
  return score(clips.frames, clips, judge, horizons)


def step_metrics(frames: np.ndarray, clips: D.Clips, renders: J.CandidateRenders, idm=None,
                 world: D.WorldConfig | None = None, chained_steps: int | None = None) -> dict:
  """Per-trajectory, per-step numbers of generated frames [N, L, H, W, 3] (the study's cache
  format): render-and-compare judge `exact` / `fine` [N, S] (steps 1..S of the renders), with
  `world` also the chained judge's `step_exact` [N, S] (each step from the pose the video reached,
  `J.judge_chained`; its first `chained_steps` steps only, as it renders per video), the IDM judge's `idm_exact` [N, L-1] when `idm` is given, `psnr` / `ssim`
  to the ground truth and detail `q_gen` / `q_gt` [N, L]."""
  pred, best = J.judge(frames, renders)
  s = pred.shape[1]
  want = clips.actions[:, 1:s + 1]
  chained = {}
  if world is not None:
    k = s if chained_steps is None else min(int(chained_steps), s)
    chained["step_exact"] = (J.judge_chained(frames, clips, world, k)[0] == want[:, :k]).astype(np.float32)
  pt, pr = split_action(pred)
  wt, wr = split_action(want)
  out = {"exact": (pred == want).astype(np.float32),
         "fine": (0.5 * (pt == wt) + 0.5 * (pr == wr)).astype(np.float32),
         "judged": best.astype(np.int16),
         "psnr": J.psnr(frames, clips.frames).astype(np.float32),
         "ssim": J.ssim(frames, clips.frames).astype(np.float32),
         "q_gen": np.asarray(sharpness(jnp.asarray(frames)), np.float32),
         "q_gt": np.asarray(sharpness(jnp.asarray(clips.frames)), np.float32), **chained}
  if idm is not None:
    out["idm_exact"] = (np.asarray(predicted_actions(idm, jnp.asarray(frames))) == clips.actions[:, 1:]).astype(np.float32)
  return out


def per_trajectory(m: dict, horizon: int) -> dict:
  """metric -> [N] per-trajectory values over latents 1..horizon-1 of `step_metrics` output
  (detail: the trajectory's Q(generated) / Q(ground truth)); a judge that covered fewer steps
  than the horizon (`step_exact` with `chained_steps`) is left out, not averaged over fewer."""
  k = horizon - 1
  if k < 1 or k > m["exact"].shape[1]:
    raise ValueError(f"per_trajectory: horizon {horizon} needs steps 1..{k}; have {m['exact'].shape[1]}")
  out = {name: 100.0 * m[name][:, :k].mean(1) for name in ("exact", "step_exact", "fine", "idm_exact")
         if name in m and m[name].shape[1] >= k}
  out["psnr"] = m["psnr"][:, 1:horizon].mean(1)
  out["ssim"] = m["ssim"][:, 1:horizon].mean(1)
  out["detail"] = m["q_gen"][:, 1:horizon].mean(1) / np.maximum(m["q_gt"][:, 1:horizon].mean(1), 1e-6)
  return out

