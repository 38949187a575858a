"""The WorldCompass RL loop: rollout -> decode -> rewards -> advantages -> NFT update -> EMAs.

Everything is built from one ml_collections config (see configs/tiny.py); `Trainer.run`
is what `python -m wc_jax.train` calls. `Trainer.run` is the generic loop (resume, metrics,
videos, checkpoints, SIGTERM); `Trainer.step` is WorldPlay's RL step, or a backbone's
(wc_jax.rl.backbone: e.g. LingBot-World's, wc_jax.rl.lingbot) when one is given.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax import sharding
from wc_jax.distributed import any_process
from wc_jax.rl import config as run_config
from wc_jax.progress import phase
from wc_jax.rewards.nft import reward_metrics, step_advantages
from wc_jax.rewards.stage import RewardStage
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl.backbone import Backbone
from wc_jax.rl.curriculum import target_clip
from wc_jax.rl import data_source
from wc_jax.rl.data_source import SyntheticTrajectories, make_data  # noqa: F401 (re-export)
from wc_jax.rl.logging_utils import MetricsWriter, write_rollout_video
from wc_jax.rl.rollout import TrainingExample
from wc_jax.rl import programs, root
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
               mesh=None, backbone: Backbone | None = None):
    """`backbone`: another world model's RL step (wc_jax.rl.backbone; e.g. LingBot-World's); None:
    this class's own WorldPlay step, built from the config here."""
    self.backbone = backbone
    if backbone is None:
      run_config.validate(cfg, required=("model", "sampling", "text", "mesh", "rl", "optim", "checkpoint"))
    run_config.check_workdir(str(workdir))
    self.cfg = cfg
    self.workdir = ckpt_lib.as_path(workdir)   # local or gs:// (etils.epath), never a local "gs:" folder
    if backbone is not None:
      self.mesh, self.reward_stage, self.traj_sharding = backbone.mesh, None, None
      with phase("building the train state", type(backbone).__name__):
        self.state = backbone.init_state()
      self.data = data if data is not None else backbone.data
    else:
      # the composition root (wc_jax.rl.root): `python -m wc_jax.plan` lowers these same programs
      run = root.build(cfg, mesh)
      self.mcfg, self.mesh, self.apply, self.engine = run.mcfg, run.mesh, run.apply, run.engine
      self.tx, self.update = run.update.tx, run.update.fn
      self.param_shardings, self.state_shardings = run.update.param_shardings, run.update.state_shardings
      with phase("placing the train state on the mesh", f"{dict(self.mesh.shape)}"):
        params = jax.device_put(run.params, self.param_shardings)
        self.state = jax.device_put(init_state(params, self.tx, cfg.seed), self.state_shardings)
      self.reward_stage = reward_stage
      self.data = data if data is not None else root.data(cfg, self.mcfg)
      self.traj_sharding = self._trajectory_sharding(int(cfg.rl.get("trajectories_per_step", 1)))
    self.local_ids: list[str] = []       # the record ids this process read for the last step
    self.workdir.mkdir(parents=True, exist_ok=True)    # only once the config was found valid
    self.ckpt = ckpt_lib.Checkpointer(self.workdir / "checkpoints", cfg)
    self.metrics_path = self.workdir / "metrics.jsonl"
    self._stop = False
    self._media = None
    self._evaluator = None

  # -- one step
  def step(self, step: int) -> dict:
    """One RL step over `rl.trajectories_per_step` trajectories: each gets its own prefix,
    context and G candidates; advantages are z-scored over all T*G candidates ("global" std)
    or per group; best-of-N per trajectory; one update consumes every kept sample.
    With a backbone, its step instead (the state and the video media come back from it)."""
    if self.backbone is not None:
      self.state, out, self._media = self.backbone.step(self.state, step)
      return out
    cfg = self.cfg
    rl = cfg.rl
    n_traj = int(rl.get("trajectories_per_step", 1))
    t0 = time.time()
    feed = data_source.next_trajectories(self.data, n_traj, self.mesh, self.traj_sharding)
    trajs, self.local_ids = feed.examples, feed.local_ids
    clip = target_clip(step, rl.curriculum, rl.max_clip, rl.fixed_clip, cfg.seed)
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    rollouts, scores, frames0 = [], [], None
    t_roll = t_reward = 0.0
    for i, traj in enumerate(trajs):
      k_i = key if n_traj == 1 else jax.random.fold_in(key, i)
      ta = time.time()
      with sharding.use_mesh(self.mesh):   # candidates over the data axes, weights FSDP
        text = self._encode_text(self.state.policy, traj)
        r = self.engine.rollout(self.state.policy, text, traj, clip, rl.group_size, k_i)
        jax.block_until_ready(r.x0)
      tb = time.time()
      prev = r.prefix[:, :, -1:] if r.prefix.shape[2] else None
      sc, frames = self.reward_stage(r, prev, getattr(traj, "real_frames", None))
      scores.append({k: jnp.asarray(_host(v), jnp.float32) for k, v in sc.items()})
      rollouts.append(r)
      frames0 = frames if i == 0 else frames0
      t_roll, t_reward = t_roll + (tb - ta), t_reward + (time.time() - tb)
    pooled = {k: jnp.stack([s_[k] for s_ in scores]) for k in scores[0]}       # [T, G]
    weights = {k: float(w) for k, w in self.reward_stage.weights.items()}
    grpo, adv = step_advantages(pooled, weights, std_type=rl.std_type, best_of_n=rl.best_of_n,
                                adv_clip=rl.adv_clip)                        # adv [T, G]
    kept = np.asarray(grpo.kept)                                             # [T, G]
    self._media = (frames0, np.asarray(grpo.combined[0]))
    idx = [np.nonzero(kept[t])[0] for t in range(n_traj)]                    # K per trajectory
    stack = lambda *xs: jnp.stack(xs)
    batch = UpdateBatch(
        x0=jnp.stack([r.x0[ix] for r, ix in zip(rollouts, idx)]),
        advantage=jnp.stack([adv[t][ix] for t, ix in enumerate(idx)]),
        cond=stack(*[r.cond for r in rollouts]), action=stack(*[r.action for r in rollouts]),
        viewmats=stack(*[r.viewmats for r in rollouts]), Ks=stack(*[r.Ks for r in rollouts]),
        text_cache=jax.tree.map(stack, *[r.text_cache for r in rollouts]),
        ctx=None if rollouts[0].ctx is None else jax.tree.map(stack, *[r.ctx for r in rollouts]),
        rl_step=jnp.asarray(step, jnp.int32))
    finite_rewards = all(bool(jnp.all(jnp.isfinite(v))) for v in pooled.values())
    if finite_rewards:
      with sharding.use_mesh(self.mesh):
        self.state, m = self.update(self.state, programs.place_batch(batch, self.mesh))
      m = {k: float(v) for k, v in m.items()}
    else:
      m = {"skipped_nonfinite": 1, "optimizer_step_applied": 0}
      log.warning("step %d: non-finite reward, update skipped", step)
    t_update = time.time()
    out = {"step": step, "clip": clip, "trajectories": n_traj,
           "chunk_generations": sum(r.chunk_generations for r in rollouts),
           "dit_calls": sum(r.dit_calls for r in rollouts), "kept": int(kept.sum()),
           "time_rollout": t_roll, "time_reward": t_reward, "time_update": t_update - t0 - t_roll - t_reward,
           "context_frames": len(rollouts[0].context_indices), **m, **reward_metrics(pooled, grpo, adv)}
    ids = [t.id for t in trajs if getattr(t, "id", "")]
    if ids:
      out["trajectory"] = ids[0] if n_traj == 1 else ",".join(ids)
    return out

  def _trajectory_sharding(self, n_traj: int):
    """Where the step's [T, ...] trajectory arrays live across processes: the data source's rule
    (logged)."""
    data_source.check_trajectories(n_traj, jax.process_count())
    if jax.process_count() == 1:
      return None                        # one process reads every trajectory itself
    shard, how = data_source.trajectory_sharding(self.mesh, n_traj)
    rows = data_source.process_rows(shard, n_traj)
    log.info("data: %d trajectories per step, %s; process %d reads rows %s from its own shard", n_traj, how,
             jax.process_index(), list(rows.get(jax.process_index(), ())))
    return shard

  def _encode_text(self, params, traj: TrainingExample):
    args = [jnp.asarray(traj.text_states), jnp.asarray(traj.text_mask), jnp.asarray(traj.byt5_states),
            jnp.asarray(traj.byt5_mask), jnp.asarray(traj.vision_states), jnp.zeros((1,), jnp.float32)]
    if getattr(traj, "vision_mask", None) is not None:   # records may pad the vision tokens
      args.append(jnp.asarray(traj.vision_mask))
    return _encode_text_fn(self.apply, params, *args)

  # -- evaluation during training (wc_jax.rl.evaluation)
  def _evaluate(self, step: int, lead: bool) -> dict:
    ecfg = self.cfg.get("evaluation", None)
    if ecfg is None or not int(ecfg.every) or self.reward_stage is None:
      return {}
    if self._evaluator is None:
      from wc_jax.rl.evaluation import TrainingEval
      with phase("building the evaluation set", f"{int(ecfg.trajectories)} held-out trajectories"):
        self._evaluator = TrainingEval(self.cfg, self.mcfg, self.apply, self.reward_stage, self._encode_text)
    if not self._evaluator.due(step):
      return {}
    with phase("evaluating the checkpoint EMA", f"step {step}"), sharding.use_mesh(self.mesh):
      metrics, videos, combined = self._evaluator.run(self.state.ema)
    if lead:
      (self.workdir / "videos").mkdir(parents=True, exist_ok=True)
      write_rollout_video(self.workdir / "videos" / f"eval{step:06d}.gif", videos[0, 0], videos, combined)
    return metrics

  # -- loop
  def _on_sigterm(self, *_):
    log.warning("SIGTERM: saving after the current step, then exiting (on a TPU pod the preemption "
                "notice, checked at every step boundary, usually comes first)")
    self._stop = True

  def run(self, total_steps: int | None = None) -> dict:
    total = total_steps or self.cfg.rl.total_steps
    start, restored = 1, None
    if self.ckpt.latest_step() is not None:
      with phase("restoring the newest checkpoint", f"step {self.ckpt.latest_step()}"):
        restored = self.ckpt.restore_latest(self.state, self.data, reward_stage=self.reward_stage)
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
                            nan_as_null=bool(lcfg.get("nan_as_null", True)) if lcfg is not None else True,
                            flush_secs=float(lcfg.get("flush_secs", 60.0)) if lcfg is not None else 60.0)
              if lead else None)
    step_level = logging.DEBUG if progress and lead else logging.INFO   # the bar shows them
    from wc_jax.rl.logging_utils import StepProfiler
    profiler = StepProfiler(self.workdir, tuple(lcfg.get("profile_steps", (0, 0))) if lcfg is not None else (0, 0))
    every = self.cfg.checkpoint.every
    last = {}
    console = contextlib.ExitStack()
    if writer is not None and writer.bar is not None:
      console.enter_context(_tqdm_logging())
    try:
      for step in range(start, total + 1):
        profiler.before(step)
        try:
          last = self.step(step)
        except StopIteration:                # a finite data stream (data.num_epochs) ran out
          log.warning("data exhausted: stopping before step %d", step)
          if step - 1 >= start and (step - 1) % every:
            self.ckpt.save(step - 1, self.state, self.data, reward_stage=self.reward_stage)
          break
        profiler.after(step, self.state)
        evaluated = self._evaluate(step, lead)
        last.update(evaluated)
        if writer is not None:
          writer.write(step, last)
        log.log(step_level, "step %d clip %d loss %.4f %s", step, last["clip"], last.get("loss", float("nan")),
                 {k: round(v, 4) for k, v in last.items() if k.startswith("reward/") and k.endswith("/mean")})
        if video_every and step % video_every == 0 and self._media is not None:
          frames, combined = self._media
          frames = _host(frames)             # every process takes part in the gather
          if lead:
            (self.workdir / "videos").mkdir(parents=True, exist_ok=True)
            write_rollout_video(self.workdir / "videos" / f"step{step:06d}.gif", frames[0, 0], frames, combined)
        stop = any_process(self._stop)      # SIGTERM may reach the processes in different steps
        # a preemption notice (jax.distributed's sync manager): True on every process at this step
        if self.ckpt.reached_preemption(step):
          log.warning("preemption notice: saving step %d, then exiting", step)
          stop = True
        if step % every == 0 or step == total or stop:
          if writer is not None:
            writer.flush()                   # metrics reach the workdir with their checkpoint
          self.ckpt.save(step, self.state, self.data, reward_stage=self.reward_stage)
        if stop:
          break
    finally:
      profiler.stop(self.state)
      console.close()
      if writer is not None:
        writer.close()
      self.ckpt.wait()
      signal.signal(signal.SIGTERM, prev)
    return last
