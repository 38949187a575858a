"""The WorldCompass RL loop: rollout -> decode -> rewards -> advantages -> NFT update -> EMAs.

Everything is built from one ml_collections config (see configs/tiny.py); `Trainer.run`
is what `python -m wc_jax.train` calls.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import pathlib
import signal
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax import sharding
from wc_jax.distributed import any_process
from wc_jax.convert import kinds, load_model
from wc_jax.rl import config as run_config
from wc_jax.progress import phase, size_note
from wc_jax.models.worldplay.config import from_config
from wc_jax.models.worldplay.model import WorldPlayDiT, functional, randomize
from wc_jax.rewards.advantages import prepare_grpo
from wc_jax.rewards.nft import nft_advantage
from wc_jax.rewards.stage import RewardStage
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl.curriculum import target_clip
from wc_jax.rl.data_source import SyntheticTrajectories, make_data  # noqa: F401 (re-export)
from wc_jax.rl.logging_utils import MetricsWriter, write_rollout_video
from wc_jax.rl.rollout import Trajectory
from wc_jax.rl import programs
from wc_jax.rl.update import UpdateBatch, init_state

log = logging.getLogger("wc_jax.train")


# ----------------------------------------------------------------------------- host values

def _host(x) -> np.ndarray:
  """A device array as NumPy on every process (an all-gather if other processes hold parts)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _tqdm_logging():
  """Our log lines printed above the progress bar instead of through it."""
  from tqdm.contrib.logging import logging_redirect_tqdm
  return logging_redirect_tqdm(loggers=[logging.getLogger("wc_jax")])


# ----------------------------------------------------------------------------- trainer

@functools.partial(jax.jit, static_argnums=(0,))
def _encode_text_fn(apply, params, *args):
  return apply(params, "encode_text", *args)


class Trainer:

  def __init__(self, cfg, workdir: str, *, reward_stage: RewardStage | None = None, data: Iterator | None = None,
               mesh=None):
    run_config.validate(cfg, required=("model", "sampling", "text", "mesh", "rl", "optim", "checkpoint"))
    run_config.check_workdir(str(workdir))
    self.cfg = cfg
    self.workdir = pathlib.Path(workdir)
    self.mcfg = from_config(cfg.model)
    self.mesh = mesh or sharding.make_mesh(dict(cfg.mesh))
    abstract = nnx.eval_shape(lambda: WorldPlayDiT(self.mcfg, rngs=nnx.Rngs(0)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract)))
    size = size_note(n_params, np.dtype(self.mcfg.param_dtype).itemsize, jax.default_backend())
    if cfg.model.checkpoint:                 # the run's model config wins; shapes are checked
      with phase("loading the WorldPlay DiT", f"{size}, from {cfg.model.checkpoint}"):
        model = load_model(kinds.DIT, cfg.model.checkpoint, **self.mcfg.to_dict())
    else:
      with phase("building the WorldPlay DiT", size):
        model = WorldPlayDiT(self.mcfg, rngs=nnx.Rngs(cfg.seed))
        if cfg.model.get("init", "reference") == "random":
          randomize(model, cfg.seed)
    self.apply, params = functional(model)
    # the update program `python -m wc_jax.plan --path=update` compiles (wc_jax.rl.programs)
    program = programs.update_program(cfg, self.apply, params, self.mesh)
    self.tx, self.update = program.tx, program.fn
    self.param_shardings, self.state_shardings = program.param_shardings, program.state_shardings
    with phase("placing the train state on the mesh", f"{dict(self.mesh.shape)}"):
      params = jax.device_put(params, self.param_shardings)
      self.state = jax.device_put(init_state(params, self.tx, cfg.seed), self.state_shardings)
    self.engine = programs.rollout_engine(cfg, self.apply)
    self.reward_stage = reward_stage
    self.data = data if data is not None else make_data(cfg, self.mcfg)
    self.workdir.mkdir(parents=True, exist_ok=True)    # only once the config was found valid
    self.ckpt = ckpt_lib.Checkpointer(self.workdir / "checkpoints", cfg)
    self.metrics_path = self.workdir / "metrics.jsonl"
    self._stop = False
    self._media = None

  # -- one step
  def step(self, step: int) -> dict:
    cfg = self.cfg
    rl = cfg.rl
    t0 = time.time()
    traj = next(self.data)
    clip = target_clip(step, rl.curriculum, rl.max_clip, rl.fixed_clip, cfg.seed)
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    with sharding.use_mesh(self.mesh):   # candidates over the data axes, weights FSDP
      text = self._encode_text(self.state.policy, traj)
      rollout = self.engine.rollout(self.state.policy, text, traj, clip, rl.group_size, key)
      jax.block_until_ready(rollout.x0)
    t_roll = time.time()
    prev = rollout.prefix[:, :, -1:] if rollout.prefix.shape[2] else None
    scores, frames = self.reward_stage(rollout, prev)
    scores = {k: jnp.asarray(_host(v), jnp.float32) for k, v in scores.items()}
    t_reward = time.time()
    weights = {k: float(w) for k, w in self.reward_stage.weights.items()}
    grpo = prepare_grpo({k: v[None] for k, v in scores.items()}, weights, std_type=rl.std_type,
                        best_of_n=rl.best_of_n)
    kept = np.asarray(grpo.kept[0])
    self._media = (frames, np.asarray(grpo.combined[0]))
    idx = np.nonzero(kept)[0]
    adv = nft_advantage({k: v[0] for k, v in grpo.advantages.items()}, weights, adv_clip_max=rl.adv_clip)
    batch = UpdateBatch(x0=rollout.x0[idx], advantage=adv[idx], cond=rollout.cond, action=rollout.action,
                        viewmats=rollout.viewmats, Ks=rollout.Ks, text_cache=rollout.text_cache, ctx=rollout.ctx)
    finite_rewards = all(bool(jnp.all(jnp.isfinite(v))) for v in scores.values())
    if finite_rewards:
      with sharding.use_mesh(self.mesh):
        self.state, m = self.update(self.state, programs.place_batch(batch, self.mesh))
      m = {k: float(v) for k, v in m.items()}
    else:
      m = {"skipped_nonfinite": 1, "optimizer_step_applied": 0}
      log.warning("step %d: non-finite reward, update skipped", step)
    t_update = time.time()
    out = {"step": step, "clip": clip, "chunk_generations": rollout.chunk_generations,
           "dit_calls": rollout.dit_calls, "kept": int(kept.sum()),
           "time_rollout": t_roll - t0, "time_reward": t_reward - t_roll, "time_update": t_update - t_reward,
           "context_frames": len(rollout.context_indices), **m}
    for k, v in scores.items():
      out[f"reward/{k}/mean"] = float(jnp.mean(v))
      out[f"reward/{k}/std"] = float(jnp.std(v))
      out[f"reward/{k}/kept_mean"] = float(jnp.mean(v[idx]))
    out["advantage/kept_mean"] = float(jnp.mean(adv[idx]))
    if getattr(traj, "id", ""):
      out["trajectory"] = traj.id
    return out

  def _encode_text(self, params, traj: Trajectory):
    args = [jnp.asarray(traj.text_states), jnp.asarray(traj.text_mask), jnp.asarray(traj.byt5_states),
            jnp.asarray(traj.byt5_mask), jnp.asarray(traj.vision_states), jnp.zeros((1,), jnp.float32)]
    if getattr(traj, "vision_mask", None) is not None:   # records may pad the vision tokens
      args.append(jnp.asarray(traj.vision_mask))
    return _encode_text_fn(self.apply, params, *args)

  # -- loop
  def _on_sigterm(self, *_):
    log.warning("SIGTERM: saving after the current step, then exiting")
    self._stop = True

  def run(self, total_steps: int | None = None) -> dict:
    total = total_steps or self.cfg.rl.total_steps
    start, restored = 1, None
    if self.ckpt.latest_step() is not None:
      with phase("restoring the newest checkpoint", f"step {self.ckpt.latest_step()}"):
        restored = self.ckpt.restore_latest(self.state, self.data)
      if restored is not None:
        self.state, start = restored
        log.info("resumed from step %d", start - 1)
    if start > total:
      log.info("nothing to do: already at step %d (rl.total_steps=%d; raise it to train further)", start - 1, total)
      self.ckpt.wait()
      return {}
    prev = signal.signal(signal.SIGTERM, self._on_sigterm)
    lcfg = self.cfg.get("logging", None)
    video_every = int(lcfg.video_every) if lcfg is not None else 0
    progress = bool(lcfg.progress) if lcfg is not None else False
    lead = jax.process_index() == 0          # one process writes metrics and videos
    log.info("training steps %d..%d; step %d compiles the rollout, reward and update programs first",
             start, total, start)
    writer = (MetricsWriter(self.workdir, total, start, progress=progress,
                            nan_as_null=bool(lcfg.get("nan_as_null", True)) if lcfg is not None else True)
              if lead else None)
    step_level = logging.DEBUG if progress and lead else logging.INFO   # the bar shows them
    every = self.cfg.checkpoint.every
    last = {}
    console = contextlib.ExitStack()
    if writer is not None and writer.bar is not None:
      console.enter_context(_tqdm_logging())
    try:
      for step in range(start, total + 1):
        try:
          last = self.step(step)
        except StopIteration:                # a finite data stream (data.num_epochs) ran out
          log.warning("data exhausted: stopping before step %d", step)
          if step - 1 >= start and (step - 1) % every:
            self.ckpt.save(step - 1, self.state, self.data)
          break
        if writer is not None:
          writer.write(step, last)
        log.log(step_level, "step %d clip %d loss %.4f %s", step, last["clip"], last.get("loss", float("nan")),
                 {k: round(v, 4) for k, v in last.items() if k.startswith("reward/") and k.endswith("/mean")})
        if video_every and step % video_every == 0 and self._media is not None:
          frames, combined = self._media
          frames = _host(frames)             # every process takes part in the gather
          if lead:
            (self.workdir / "videos").mkdir(exist_ok=True)
            write_rollout_video(self.workdir / "videos" / f"step{step:06d}.gif", frames[0, 0], frames, combined)
        stop = any_process(self._stop)      # SIGTERM may reach the processes in different steps
        if step % every == 0 or step == total or stop:
          self.ckpt.save(step, self.state, self.data)
        if stop:
          break
    finally:
      console.close()
      if writer is not None:
        writer.close()
      self.ckpt.wait()
      signal.signal(signal.SIGTERM, prev)
    return last
