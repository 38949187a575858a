"""Base training of the tiny WorldPlay DiT on ground-truth clips of the synthetic world.

The reference's objective: flow matching with v-prediction (target = eps - x0,
x_t = (1 - sigma) x0 + sigma eps, t = 1000 sigma), the chunk-causal mask (a chunk sees
text and chunks <= itself), and one logit-normal sigma per chunk, shifted by 3.

One addition for autoregressive use at this scale (`base.clean_context_prob`): with that
probability a sample trains one chunk k >= 2 against clean earlier chunks tagged with the
context timestep, exactly what `context_cache` feeds the model at inference; those
context chunks carry no loss. With 0 the objective is the reference's alone.

    python -m wc_jax.world.base_train --config=configs/synthetic.py --workdir=/tmp/wc_world/base
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wc_jax.convert import dit as dit_convert
from wc_jax.convert.common import save_orbax
from wc_jax.models.worldplay.config import from_config
from wc_jax.models.worldplay.model import WorldPlayDiT, functional
from wc_jax.world import data as D
from wc_jax.world.latent import PatchLatent
from wc_jax.inference.engine import i2v_condition


def world_config(cfg) -> D.WorldConfig:
  w = cfg.world
  return D.WorldConfig(height=w.height, width=w.width, focal=w.focal, step=w.step, angle_deg=w.angle_deg,
                       min_segment=w.min_segment, max_segment=w.max_segment, max_pitch_deg=w.max_pitch_deg,
                       supersample=int(w.get("supersample", 1)), detail=float(w.get("detail", 1.0)),
                       patch=int(w.patch), lowpass=int(w.get("lowpass", 0)),
                       wall_panel=float(w.get("wall_panel", 0.0)), sky_contrast=float(w.get("sky_contrast", 0.15)))


def scene_range(pair) -> range:
  a, b = pair
  return range(int(a), int(b))


def load_or_make_clips(path: pathlib.Path, num: int, latents: int, scenes, seed: int, wcfg) -> D.Clips:
  """Renders (or reloads) a clip set; rendering is deterministic, the file only saves time."""
  if path.exists():
    z = np.load(path)
    if z["frames"].shape[:2] == (num, latents):
      return D.Clips(z["frames"], z["actions"], z["w2c"], z["Ks"], z["scenes"])
  c = D.make_clips(num, latents, scenes, seed, wcfg)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, frames=c.frames, actions=c.actions, w2c=c.w2c, Ks=c.Ks, scenes=c.scenes)
  return c


def chunk_sigmas(key, batch: int, chunks: int, shift: float):
  """Per-chunk logit-normal sigma, shifted: s u / (1 + (s - 1) u), u = sigmoid(N(0, 1))."""
  u = jax.nn.sigmoid(jax.random.normal(key, (batch, chunks)))
  return shift * u / (1.0 + (shift - 1.0) * u)


def make_loss(apply, mcfg, *, shift: float, clean_context_prob: float, context_timestep: float,
              label_noise: float = 0.0, corrupt_poses: bool = False):
  """The base objective. `label_noise`: probability that a chunk is shown the action labels
  of another clip of the batch (mislabelled data, as when labels come from a pose
  estimator). A base follows the camera poses more than the labels, so labels alone do not
  make it follow less; `corrupt_poses` shows the wrong chunks that clip's camera poses too
  (labels AND poses wrong, as with estimated poses), which does."""
  chunk = mcfg.chunk_latents
  if not 0.0 <= label_noise < 1.0:
    raise ValueError(f"make_loss: label_noise must be in [0, 1), got {label_noise}")

  def loss_fn(params, batch, key):
    x0, cond, action, w2c, ks, text = batch
    b, _, t = x0.shape[:3]
    n = t // chunk
    k_sig, k_eps, k_mode, k_tgt, k_lab = jax.random.split(key, 5)
    if label_noise > 0.0:
      wrong = jnp.repeat(jax.random.uniform(k_lab, (b, n)) < label_noise, chunk, axis=1)   # [B, T]
      action = jnp.where(wrong, jnp.roll(action, 1, axis=0), action)
      if corrupt_poses:
        w2c = jnp.where(wrong[:, :, None, None], jnp.roll(w2c, 1, axis=0), w2c)
    sig = chunk_sigmas(k_sig, b, n, shift)                                   # [B, n]
    # clean-context samples: chunks < k are clean context at the context timestep
    clean = jax.random.uniform(k_mode, (b,)) < clean_context_prob
    tgt = jax.random.randint(k_tgt, (b,), 1, max(n, 2))
    is_ctx = clean[:, None] & (jnp.arange(n)[None] < tgt[:, None])             # [B, n]
    sig_in = jnp.where(is_ctx, 0.0, sig)
    sig_lat = jnp.repeat(sig_in, chunk, axis=1)                              # [B, T]
    timestep = jnp.where(jnp.repeat(is_ctx, chunk, axis=1), context_timestep, 1000.0 * sig_lat)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    s5 = sig_lat[:, None, :, None, None]
    x_t = (1.0 - s5) * x0 + s5 * eps
    hs = jnp.concatenate([x_t, cond], axis=1)
    tt = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:]), text)
    v = apply(params, "forward", hs, timestep, tt, action=action, viewmats=w2c, Ks=ks, causal=True)
    err = jnp.mean(jnp.square(v - (eps - x0)), axis=(1, 3, 4))                # [B, T]
    w = 1.0 - jnp.repeat(is_ctx, chunk, axis=1).astype(jnp.float32)
    return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)

  return loss_fn


build_cond = i2v_condition   # [B, C, h, w] first-frame latents -> [B, C+1, T, h, w]: the engine's condition


def encode_text_tokens(apply, params, cond_states: dict):
  return apply(params, "encode_text", jnp.asarray(cond_states["text_states"]), jnp.asarray(cond_states["text_mask"]),
               jnp.asarray(cond_states["byt5_states"]), jnp.asarray(cond_states["byt5_mask"]),
               jnp.asarray(cond_states["vision_states"]), jnp.zeros((1,), jnp.float32))


def save_params(params, out: pathlib.Path, cfg, extra: dict | None = None) -> None:
  """Writes a DiT checkpoint like `python -m wc_jax.convert` does: kind "dit" and the model's
  DiTConfig, so `load_model(kinds.DIT, out)` and `--orbax out --to-torch ...` read it (the
  reference config.json is derived on export)."""
  save_orbax(nnx.to_pure_dict(params), out, {"kind": dit_convert.KIND, "model_config": from_config(cfg.model).to_dict(),
                                             **(extra or {})})


def parse_restarts(spec: str) -> list[tuple[int, float]]:
  """"steps:peak,steps:peak,..." -> [(steps, peak lr)]: the cosine cycles of a warm-restart schedule."""
  cycles = []
  for part in spec.split(","):
    try:
      n, p = part.split(":")
      cycles.append((int(n), float(p)))
    except ValueError:
      raise ValueError(f"base.restarts={spec!r}: expected 'steps:peak_lr,steps:peak_lr,...' "
                       f"(e.g. '4500:3e-3,6000:2e-3'), got {part!r}") from None
    if cycles[-1][0] < 2 or cycles[-1][1] <= 0:
      raise ValueError(f"base.restarts={spec!r}: each cycle needs >= 2 steps and a positive lr, got {part!r}")
  return cycles


def lr_schedule(restarts: str, steps: int, peak: float, warmup: int):
  """Warmup + cosine to 10 % of the peak over `steps`; with `restarts` ("steps:peak,..."), one such
  cycle per entry (SGDR warm restarts, optax.sgdr_schedule), which must cover `steps` exactly: a
  long base run in one process, the optimizer state and EMA kept across cycles."""
  if not restarts:
    return optax.warmup_cosine_decay_schedule(0.0, peak, min(warmup, max(1, steps // 5)), max(steps, 2), peak * 0.1)
  cycles = parse_restarts(restarts)
  total = sum(n for n, _ in cycles)
  if total != steps:
    raise ValueError(f"base.restarts={restarts!r} covers {total} steps but the run has {steps} "
                     f"(set base.steps={total})")
  return optax.sgdr_schedule([dict(init_value=0.0, peak_value=p, warmup_steps=min(warmup, max(1, n // 5)),
                                   decay_steps=n, end_value=p * 0.1) for n, p in cycles])


def train(cfg, workdir: str, *, steps: int | None = None, clips: D.Clips | None = None, log=print,
          init: str | None = None, lr: float | None = None, latent: PatchLatent | None = None,
          seconds: float | None = None, ema_on_init: bool = False) -> dict:
  """Trains the base model; writes workdir/{latent.json, model/, base_metrics.jsonl}. Returns a summary.

  `init` (a DiT checkpoint) with `latent` (its latent map) continues training a model instead
  of starting from scratch (the supervised fine-tuning baseline of the study; the raw weights
  are saved, no EMA); `lr` overrides `base.lr`; `seconds` stops training after that much wall
  time (compilation included), the equal-compute budget of a baseline. `ema_on_init` keeps the EMA
  of a continued run (a long base training in stages, `base.init`), which then saves EMA weights
  like a run from scratch."""
  wd = pathlib.Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  bc, w = cfg.base, cfg.world
  steps = int(steps if steps is not None else bc.steps)
  snapshot_every = int(bc.get("snapshot_every", 0))
  # the schedule first: a bad base.restarts fails before any clip is rendered
  peak = float(bc.lr if lr is None else lr)
  restarts = str(bc.get("restarts", "") or "") if init is None and lr is None else ""
  sched = lr_schedule(restarts, steps, peak, int(bc.warmup))
  wcfg = world_config(cfg)
  t0 = time.time()
  if clips is None:
    clips = load_or_make_clips(wd / "train_clips.npz", w.train_clips, w.train_latents, scene_range(w.train_scenes),
                               cfg.seed * 100000, wcfg)
  if latent is None:
    latent = PatchLatent(w.patch, keep=int(w.get("lowpass", 0))).fitted(clips.frames[: min(256, len(clips.frames))],
                                                                          scale=w.get("latent_scale", "channel"))
  (wd / "latent.json").write_text(json.dumps(latent.to_dict()))
  x0_all = np.asarray(latent.encode(clips.frames))                          # [N, C, T, h, w]
  t_data = time.time() - t0
  mcfg = from_config(cfg.model)
  model = WorldPlayDiT(mcfg, rngs=nnx.Rngs(cfg.seed))
  apply, params = functional(model)
  if init:
    from wc_jax.convert.common import load_orbax
    from wc_jax.models.worldplay.model import load_params
    load_params(model, load_orbax(init)[0])
    apply, params = functional(model)
  loss_fn = make_loss(apply, mcfg, shift=float(bc.timestep_shift), clean_context_prob=float(bc.clean_context_prob),
                      context_timestep=float(mcfg.context_timestep), label_noise=float(bc.get("label_noise", 0.0)),
                      corrupt_poses=bool(bc.get("corrupt_poses", False)))
  tx = optax.chain(optax.clip_by_global_norm(bc.grad_clip), optax.adamw(sched, weight_decay=bc.weight_decay))
  opt_state = tx.init(params)
  ema = jax.tree.map(jnp.array, params)
  cond_states = D.conditioning(mcfg, cfg.text)

  @jax.jit
  def step_fn(params, opt_state, ema, x0, actions, w2c, ks, key):
    def full_loss(p):
      tx_tokens = encode_text_tokens(apply, p, cond_states)
      cond = build_cond(x0[:, :, 0], x0.shape[2])
      return loss_fn(p, (x0, cond, actions, w2c, ks, tx_tokens), key)
    loss, g = jax.value_and_grad(full_loss)(params)
    upd, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, upd)
    ema = jax.tree.map(lambda e, p: bc.ema_decay * e + (1 - bc.ema_decay) * p, ema, params)
    return params, opt_state, ema, loss, optax.global_norm(g)

  # a staged run draws a fresh batch stream (the first stage's would repeat); a run from scratch
  # and the fine-tuning baselines keep the seed's stream
  staged = bool(init) and ema_on_init
  keep_ema = not init or ema_on_init          # EMA weights are saved once warm (not for fine-tuning baselines)
  rng = np.random.default_rng((cfg.seed, 1) if staged else cfg.seed)
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1) if staged else jax.random.key(cfg.seed)
  hist = []
  metrics = open(wd / "base_metrics.jsonl", "w")
  t1 = time.time()
  for s in range(1, steps + 1):
    if seconds is not None and s > 1 and time.time() - t1 >= seconds:
      steps = s - 1
      break
    idx = rng.choice(len(x0_all), bc.batch_size, replace=False)
    key, sub = jax.random.split(key)
    params, opt_state, ema, loss, gn = step_fn(params, opt_state, ema, jnp.asarray(x0_all[idx]),
                                               jnp.asarray(clips.actions[idx], jnp.float32),
                                               jnp.asarray(clips.w2c[idx]), jnp.asarray(clips.Ks[idx]), sub)
    hist.append(float(loss))
    if s % bc.log_every == 0 or s == steps:
      rec = {"step": s, "loss": float(np.mean(hist[-bc.log_every:])), "grad_norm": float(gn),
             "time": time.time() - t1}
      metrics.write(json.dumps(rec) + "\n")
      metrics.flush()
      log(f"base step {s}/{steps} loss {rec['loss']:.4f} ({rec['time']:.0f}s)")
    if snapshot_every and s % snapshot_every == 0 and s < steps:
      # mid-run weights (EMA once warm, as at the end): a long run can be judged, or used, before it ends
      warm = s >= 5 / (1 - bc.ema_decay) and keep_ema
      save_params(ema if warm else params, wd / "snapshots" / f"step{s:06d}", cfg, {"steps": s})
  metrics.close()
  steps = len(hist)
  if steps > 0:
    # EMA weights early in a short run are mostly the random init: use them only once warm.
    final = ema if steps >= 5 / (1 - bc.ema_decay) and keep_ema else params
    save_params(final, wd / "model", cfg, {"steps": steps})
  return {"losses": hist, "time_data": t_data, "time_train": time.time() - t1, "latent": latent}


def staged_init(cfg) -> tuple[str | None, PatchLatent | None]:
  """`base.init` (a base workdir's model/ folder) and the latent map beside it: a long base training
  run in stages continues the model in its own latent space, with a fresh schedule."""
  init = str(cfg.base.get("init", "") or "")
  if not init:
    return None, None
  latent_file = pathlib.Path(init).parent / "latent.json"
  if not latent_file.exists():
    raise FileNotFoundError(f"base.init={init}: no {latent_file} beside it; base.init must be the model/ "
                            "folder of a base_train workdir")
  return init, PatchLatent.from_dict(json.loads(latent_file.read_text()))


def main(argv):
  del argv
  from absl import flags
  cfg = flags.FLAGS.config
  init, latent = staged_init(cfg)
  out = train(cfg, flags.FLAGS.workdir, init=init, latent=latent, ema_on_init=True)
  print(f"base training: {len(out['losses'])} steps, final loss {np.mean(out['losses'][-50:]):.4f}, "
        f"{out['time_train']:.0f}s")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/synthetic.py", "config file")
  flags.DEFINE_string("workdir", "/tmp/wc_world/base", "output folder")
  app.run(main)
