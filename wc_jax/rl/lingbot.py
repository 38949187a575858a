"""WorldCompass RL on LingBot-World: the LingBot backbone of the RL loop (wc_jax.rl.backbone).

LingBot-World is bidirectional (no autoregressive chunks), so the rollout unit is a whole clip.
One RL step takes one example (first frame, camera path, prompt states + negative) and:

1. rollout: G candidate videos with the pipeline's UniPC + CFG sampler (wc_jax.inference.unipc)
   over BOTH experts (the high-noise one for t >= boundary), `rl.rollout_steps` steps; the
   trained expert samples with its rollout policy (the policy EMA), the other one is frozen;
2. decode: the Wan VAE -> frames in [0, 1];
3. rewards (`LingBotRewards`): camera following = the pose model's per-frame poses against the
   commanded path through the interaction reward's own labeller and accuracies (`fine_action`,
   `action`: wc_jax.rewards.interaction.interaction_scores), plus the continuous errors of the
   frame-to-frame motions (`camera_rotation`: -mean angle in degrees; `camera_translation`:
   -relative error of the scale-aligned steps, in [-1, 0]); and quality drift (`drift`);
4. GRPO advantages + best-of-N (wc_jax.rewards.advantages.prepare_grpo), the NFT advantage;
5. update (`make_update`): the NFT loss (wc_jax.rewards.nft.nft_loss) of the trained expert
   (`rl.expert`: low (default) | high | both), sigmas drawn from the rollout schedule inside the
   expert's timestep range (low: t < boundary), clip + AdamW on fp32 master weights, then the
   policy EMA. `python -m wc_jax.plan --path=update` lowers this same function at A14B size.

Data (`SyntheticClips`): the synthetic world (wc_jax.data.synthetic_world) rendered along a
commanded path at the config's frame size, fixed random prompt states at text_dim; the next
index is the data state a checkpoint keeps.
"""
from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wc_jax.data import synthetic_world as sw
from wc_jax.data import trajectories as T
from wc_jax.inference import lingbot as pipeline_lib
from wc_jax.inference import unipc
from wc_jax.models.wan_vae import model as wan_vae
from wc_jax.rewards.advantages import STD_TYPE_NAMES
from wc_jax.rewards.batch import score_candidates
from wc_jax.rewards.interaction import interaction_scores
from wc_jax.rewards.labels import gt_action_labels, relative_motion
from wc_jax.rewards.nft import nft_loss, reward_metrics, step_advantages
from wc_jax.rewards.quality import quality_drift_reward, quality_reward
from wc_jax.rl import config as run_config
from wc_jax.rl.config import ConfigError, anything, boolean, choice, integer, number

EXPERTS = ("low", "high", "both")
POSE_REWARDS = ("fine_action", "action", "camera_rotation", "camera_translation")
SCORER_REWARDS = ("drift", "quality")
REWARDS = POSE_REWARDS + SCORER_REWARDS
DATA_SOURCES = ("synthetic_world",)
TRAIN_SECTIONS = ("model", "vae", "sampling", "mesh", "rl", "optim", "rewards", "checkpoint")

# ----------------------------------------------------------------------------- config

SECTIONS = {
    "rl": dict(
        total_steps=integer(1), expert=choice(EXPERTS, "which expert(s) the update trains"),
        group_size=integer(2, why="advantages need two or more candidates"),
        best_of_n=integer(2, why="kept N/2 best + N/2 worst"), rollout_steps=integer(1),
        shift=number(0, lo_open=True), sigma_fraction=number(0, 1, lo_open=True), beta=number(0, lo_open=True),
        adv_clip=number(0, lo_open=True), policy_ema_decay=number(0, 1), std_type=choice(STD_TYPE_NAMES),
        released_v_old=boolean()),
    "optim": dict(lr=number(0, lo_open=True), weight_decay=number(0), grad_clip=number(0, lo_open=True),
                  b1=number(0, 1, hi_open=True), b2=number(0, 1, hi_open=True)),
    "data": dict(source=choice(DATA_SOURCES, "LingBot RL reads the synthetic world for now"), seed=integer(0),
                 synthetic=anything()),
}
SYNTHETIC = dict(num_examples=integer(1), num_scenes=integer(1), scene_seed=integer(0), step=number(0),
                 angle_deg=number(0), focal=number(0, lo_open=True), supersample=integer(1))


def _check(section, name: str, rules: dict) -> None:
  run_config.check_rules(section, name, rules, owner=" for LingBot-World")


def validate(cfg, required: tuple[str, ...] = ()) -> None:
  """Raises ConfigError (naming the key) for a LingBot-World RL config that cannot run."""
  from wc_jax.models.lingbot.config import from_config
  for name in required:
    if name not in cfg:
      raise ConfigError(name, None, f"LingBot-World RL needs a `{name}` section (see configs/lingbot_tiny.py)")
  if "seed" in cfg:
    problem = integer(0).check(cfg.seed)
    if problem:
      raise ConfigError("seed", cfg.seed, problem)
  if "model" in cfg:
    try:
      from_config(cfg.model)
    except (TypeError, ValueError) as e:
      raise ConfigError("model", "...", str(e).splitlines()[0]) from None
  for name, rules in SECTIONS.items():
    if name in cfg:
      _check(cfg[name], name, rules)
  for name in ("mesh", "checkpoint", "logging"):
    if name in cfg:
      _check(cfg[name], name, run_config.SECTIONS[name])
  if "data" in cfg and "synthetic" in cfg.data:
    _check(cfg.data.synthetic, "data.synthetic", SYNTHETIC)
  if "rl" in cfg:
    rl = cfg.rl
    if rl.get("best_of_n", 2) > rl.get("group_size", 2):
      raise ConfigError("rl.best_of_n", rl.best_of_n, f"must be <= rl.group_size ({rl.group_size})")
    if "sampling" in cfg:
      for expert in trained_experts(rl.get("expert", "low")):
        if not len(expert_sigmas(cfg, expert)):
          raise ConfigError("rl.expert", rl.get("expert", "low"),
                            f"the rollout schedule (rl.rollout_steps={rl.rollout_steps}, shift "
                            f"{_shift(cfg)}, boundary {cfg.sampling.boundary}) has no step on the {expert}-noise "
                            f"expert to train it on: raise rl.rollout_steps")
  if "rewards" in cfg:
    weights = cfg.rewards.get("weights", None)
    if weights is None or not len(weights):
      raise ConfigError("rewards.weights", None, "name at least one reward and its weight")
    for name, w in weights.items():
      if name not in REWARDS:
        raise ConfigError(f"rewards.weights.{name}", w, f"is not a LingBot-World RL reward; choose from {REWARDS}")
      if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w):
        raise ConfigError(f"rewards.weights.{name}", w, "must be a finite number")
      section = "pose" if name in POSE_REWARDS else "quality"
      if section not in cfg.rewards:
        raise ConfigError(f"rewards.{section}", None, f"reward {name!r} needs its model's section "
                          f"`rewards.{section}` (see configs/lingbot_tiny.py)")


def trained_experts(expert: str) -> tuple[str, ...]:
  if expert not in EXPERTS:
    raise ConfigError("rl.expert", expert, f"must be one of {EXPERTS}")
  return ("low", "high") if expert == "both" else (expert,)


def _shift(cfg) -> float:
  return float(cfg.rl.get("shift", cfg.sampling.shift))


def expert_sigmas(cfg, expert: str) -> np.ndarray:
  """The rollout schedule's sigmas served by `expert` (high: t >= boundary * 1000), the ones the
  NFT loss draws from for it. float32 [n]."""
  s = cfg.sampling
  n_train = int(s.get("num_train_timesteps", unipc.NUM_TRAIN_TIMESTEPS))
  timesteps, sigmas = unipc.schedule(int(cfg.rl.rollout_steps), _shift(cfg), n_train)
  high = timesteps >= float(s.boundary) * n_train
  return np.asarray(sigmas[:-1][high if expert == "high" else ~high], np.float32)


def sigmas_per_sample(cfg, expert: str) -> int:
  return max(1, int(len(expert_sigmas(cfg, expert)) * float(cfg.rl.sigma_fraction)))


# ----------------------------------------------------------------------------- the update

def init_train_state(params, tx) -> dict:
  """fp32 master weights, the rollout policy (a policy-EMA copy) and the optimizer state."""
  f32 = lambda t: jax.tree.map(lambda x: jnp.array(x, jnp.float32), t)     # copies: the update donates them
  return {"params": f32(params), "policy": f32(params), "opt": tx.init(f32(params))}


def make_optimizer(optim) -> optax.GradientTransformation:
  """clip_by_global_norm + AdamW (the plan's and the trainer's optimizer for LingBot-World);
  `optim`: the config's section or a dict of it."""
  return optax.chain(optax.clip_by_global_norm(float(optim["grad_clip"])),
                     optax.adamw(float(optim["lr"]), b1=float(optim.get("b1", 0.9)), b2=float(optim.get("b2", 0.999)),
                                 weight_decay=float(optim["weight_decay"])))


def make_update(apply, tx, *, kept: int, n_sigmas: int, beta: float, adv_clip: float, policy_ema_decay: float,
                released_v_old: bool = False, num_train_timesteps: int = unipc.NUM_TRAIN_TIMESTEPS):
  """update(train_state, x0, y, context, cam, sigmas, advantages, key) -> (train_state, metrics).

  x0 [K, C, F, H, W] the kept candidates' clean latents; y [1, 4+z, F, H, W] their i2v condition;
  context [1, L, D] prompt states; cam [1, 384, F, H, W]; sigmas [K, S] drawn in the trained
  expert's range; advantages [K] (NFT advantages). Per kept sample x sigma (a scan): noise from
  fold_in(key, j), x_t = (1 - sigma) x0 + sigma noise, t = 1000 sigma, the rollout policy's v_old
  (stop-gradient) and the NFT loss of v_theta; gradients summed (the loss divides by K*S), then
  the optimizer on the fp32 master weights and policy <- d policy + (1 - d) params."""
  micro = kept * n_sigmas

  def update(ts, x0, y, context, cam, sigmas, advantages, key):
    params, policy = ts["params"], ts["policy"]
    idx = jnp.repeat(jnp.arange(kept), n_sigmas)

    def one(carry, xs):   # the weights ride in the carry: nnx modules merge tracers of one level
      grads, params, policy = carry
      i, sigma, j = xs
      x = x0[i][None]
      noise = jax.random.normal(jax.random.fold_in(key, j), x.shape, jnp.float32)
      x_t = (1.0 - sigma) * x + sigma * noise
      t = (sigma * num_train_timesteps)[None]
      v_old = jax.lax.stop_gradient(apply(policy, x_t, t, context, y=y, cam=cam))

      def loss_fn(p):
        v = apply(p, x_t, t, context, y=y, cam=cam)
        out = nft_loss(v, v_old, x_t, x, sigma, advantages[i][None], beta=beta, adv_clip_max=adv_clip,
                       overwrite_v_old=released_v_old, grad_accum_steps=micro)
        return out.loss.sum()

      loss, g = jax.value_and_grad(loss_fn)(params)
      return (jax.tree.map(jnp.add, grads, g), params, policy), loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, _, _), losses = jax.lax.scan(one, (zeros, params, policy),
                                         (idx, sigmas.reshape(-1), jnp.arange(micro)))
    updates, opt = tx.update(grads, ts["opt"], params)
    new = optax.apply_updates(params, updates)
    policy = jax.tree.map(lambda e, p: policy_ema_decay * e + (1.0 - policy_ema_decay) * p, policy, new)
    metrics = {"loss": jnp.sum(losses), "grad_norm": optax.global_norm(grads)}
    return {"params": new, "policy": policy, "opt": opt}, metrics

  return update


def update_settings(cfg, expert: str) -> dict:
  """make_update's keyword settings from a config, for `expert`."""
  rl = cfg.rl
  return dict(kept=int(rl.best_of_n), n_sigmas=sigmas_per_sample(cfg, expert), beta=float(rl.beta),
              adv_clip=float(rl.adv_clip), policy_ema_decay=float(rl.policy_ema_decay),
              released_v_old=bool(rl.get("released_v_old", False)),
              num_train_timesteps=int(cfg.sampling.get("num_train_timesteps", unipc.NUM_TRAIN_TIMESTEPS)))


@functools.lru_cache(maxsize=8)
def _jitted_update(apply, optim: tuple, settings: tuple):
  """One compiled program per (graph, optimizer, settings): runs of one config share it."""
  tx = make_optimizer(dict(optim))
  return tx, jax.jit(make_update(apply, tx, **dict(settings)), donate_argnums=(0,))


# ----------------------------------------------------------------------------- data

class Example(NamedTuple):
  """One LingBot RL example: what `LingBotPipeline.generate` takes, plus the rendered truth."""
  id: str
  first_frame: np.ndarray       # uint8 [H, W, 3]
  poses: np.ndarray             # [F, 4, 4] c2w, OpenCV axes (the reference's poses.npy)
  intrinsics: np.ndarray        # [F, 4] fx, fy, cx, cy at 480x832 (intrinsics.npy)
  text_states: np.ndarray       # [L, text_dim] prompt states
  negative_states: np.ndarray   # [L, text_dim] negative-prompt states (the CFG branch)
  frames: np.ndarray            # [F, H, W, 3] float32 in [0, 1]: the path rendered (ground truth)


# per-latent motion (forward, backward, right, left, yaw, pitch) in units of step / angle
PRIMITIVES = {"w": (1, 0, 0, 0, 0, 0), "s": (0, 1, 0, 0, 0, 0), "d": (0, 0, 1, 0, 0, 0), "a": (0, 0, 0, 1, 0, 0),
              "right": (0, 0, 0, 0, 1, 0), "left": (0, 0, 0, 0, -1, 0), "w+right": (1, 0, 0, 0, 1, 0),
              "w+left": (1, 0, 0, 0, -1, 0)}


class SyntheticClips:
  """Examples of the synthetic world: example i = scene (scene_seed + i % num_scenes), one camera
  primitive held over the clip (seeded by i), rendered at height x width with normalised focal
  `focal`; fixed random prompt / negative states (one prompt for the world). Deterministic in the
  index; `get_state` / `set_state` carry the next index (the checkpointed data state)."""

  def __init__(self, num_frames: int, height: int, width: int, text_len: int, text_dim: int, *, seed: int = 0,
               num_examples: int = 64, num_scenes: int = 4, scene_seed: int = 0, step: float = 0.25,
               angle_deg: float = 6.0, focal: float = 0.6, supersample: int = 1):
    self.num_frames = pipeline_lib.check_num_frames(num_frames)
    self.height, self.width = height, width
    self.seed, self.num_examples, self.num_scenes, self.scene_seed = seed, num_examples, num_scenes, scene_seed
    self.step, self.angle, self.focal, self.supersample = step, np.deg2rad(angle_deg), focal, supersample
    rng = np.random.default_rng([seed, 0x7E47])
    n = max(1, min(text_len, 8))
    self.text_states = rng.standard_normal((n, text_dim)).astype(np.float32)
    self.negative_states = rng.standard_normal((n, text_dim)).astype(np.float32)
    self.next = 0
    self._scenes = {}

  @classmethod
  def from_config(cls, cfg) -> "SyntheticClips":
    from wc_jax.models.lingbot.config import from_config
    mcfg = from_config(cfg.model)
    d = cfg.get("data", None)
    syn = dict(d.synthetic.to_dict()) if d is not None and "synthetic" in d else {}
    s = cfg.sampling
    return cls(int(s.frame_num), int(s.height), int(s.width), mcfg.text_len, mcfg.text_dim,
               seed=int(d.get("seed", cfg.seed)) if d is not None else int(cfg.seed), **syn)

  def get_state(self) -> dict:
    return {"next": int(self.next)}

  def set_state(self, state: dict) -> None:
    self.next = int(state["next"])

  def __iter__(self):
    return self

  def __next__(self) -> Example:
    ex = self.example(self.next % self.num_examples)
    self.next += 1
    return ex

  def trajectory(self, index: int) -> T.Trajectory:
    rng = np.random.default_rng([self.seed, int(index), 0xCA3])
    names = sorted(PRIMITIVES)
    row = np.asarray(PRIMITIVES[names[int(rng.integers(len(names)))]], np.float64)
    row = np.concatenate([row[:4] * self.step, row[4:] * self.angle])
    num_latents = (self.num_frames - 1) // pipeline_lib.FRAMES_PER_LATENT + 1
    motions = np.concatenate([np.zeros((1, 6)), np.repeat(row[None], num_latents - 1, axis=0)])
    k = np.array([[self.focal * self.width, 0, self.width / 2], [0, self.focal * self.height, self.height / 2],
                  [0, 0, 1.0]])
    return T.trajectory_from_motions(motions, k=k)

  def example(self, index: int) -> Example:
    tr = self.trajectory(index)
    scene_id = self.scene_seed + index % self.num_scenes
    if scene_id not in self._scenes:
      self._scenes[scene_id] = sw.make_scene(int(scene_id))
    k = np.array([[self.focal, 0, 0.5], [0, self.focal, 0.5], [0, 0, 1.0]])
    frames = sw.render(self._scenes[scene_id], tr.frame_c2w, self.height, self.width, intrinsics=k,
                       supersample=self.supersample).frames.astype(np.float32)
    poses, intrinsics = pipeline_lib.poses_from_trajectory(tr, self.num_frames)
    first = np.round(np.clip(frames[0], 0, 1) * 255).astype(np.uint8)
    return Example(f"synthetic-{index}", first, poses, intrinsics, self.text_states, self.negative_states, frames)


# ----------------------------------------------------------------------------- rewards

@jax.jit
def camera_errors(w2c, c2w_commanded):
  """Continuous camera-following errors of one clip: (rotation, translation).

  w2c [F, 3|4, 4]: the pose model's world-to-camera poses; c2w_commanded [F, 4, 4]: the path.
  Both become frame-to-frame motions in the previous camera's frame (rewards.labels.relative_motion).
  rotation: mean angle of R_est^T R_cmd in degrees. translation: the estimated steps scaled by the
  least-squares factor s >= 0 (a monocular pose model's scale is arbitrary), then
  sqrt(sum |s t_est - t_cmd|^2 / sum |t_cmd|^2): 0 = the commanded motion, 1 = none of it."""
  r_e, t_e = relative_motion(w2c, "w2c")
  r_c, t_c = relative_motion(c2w_commanded, "c2w")
  cos = (jnp.sum(r_e * r_c, axis=(-2, -1)) - 1.0) / 2.0
  rot = jnp.mean(jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0))))
  scale = jnp.maximum(jnp.sum(t_e * t_c) / jnp.maximum(jnp.sum(t_e * t_e), 1e-12), 0.0)
  trans = jnp.sqrt(jnp.sum((scale * t_e - t_c) ** 2) / jnp.maximum(jnp.sum(t_c * t_c), 1e-12))
  return rot, trans


def _poses(pose_model, frames):
  return pose_model(frames)


class LingBotRewards:
  """frames [G, F, H, W, 3] in [0, 1] + the first frame + the commanded path -> {reward: [G]}.

  pose_model: frames [F, H, W, 3] -> w2c [F, 3|4, 4] (DA3's make_pose_model, or any callable);
  scorer: images -> quality (for drift / quality). The pose model runs once per candidate; the
  camera rewards all read its poses."""

  def __init__(self, weights: dict, pose_model=None, scorer=None, mesh=None):
    self.weights = {k: float(v) for k, v in weights.items()}
    unknown = [k for k in self.weights if k not in REWARDS]
    if unknown:
      raise ValueError(f"unknown LingBot-World RL rewards {unknown}; choose from {REWARDS}")
    if any(k in POSE_REWARDS for k in self.weights) and pose_model is None:
      raise ValueError(f"rewards {[k for k in self.weights if k in POSE_REWARDS]} need a pose model")
    if any(k in SCORER_REWARDS for k in self.weights) and scorer is None:
      raise ValueError(f"rewards {[k for k in self.weights if k in SCORER_REWARDS]} need a quality scorer")
    self.pose_model, self.scorer, self.mesh = pose_model, scorer, mesh

  @classmethod
  def from_config(cls, cfg, mesh=None) -> "LingBotRewards":
    from wc_jax.progress import phase
    from wc_jax.rl.components import build_pose_model, build_quality_scorer
    rcfg = cfg.rewards
    names = list(rcfg.weights.keys())
    pose = scorer = None
    if any(n in POSE_REWARDS for n in names):
      with phase("building the pose model", rcfg.pose.get("checkpoint", "") or "random weights"):
        pose = build_pose_model(rcfg.pose)
    if any(n in SCORER_REWARDS for n in names):
      with phase("building the quality scorer", rcfg.quality.get("checkpoint", "") or "random weights"):
        scorer = build_quality_scorer(rcfg.quality, rcfg)
    return cls(dict(rcfg.weights), pose, scorer, mesh)

  def __call__(self, frames, first_frame, poses) -> dict:
    frames = jnp.asarray(frames, jnp.float32)
    poses = jnp.asarray(poses, jnp.float32)
    n_frames = frames.shape[1]
    if poses.shape[0] < n_frames:
      raise ValueError(f"{poses.shape[0]} commanded poses for clips of {n_frames} frames")
    poses = poses[:n_frames]
    out = {}
    if any(k in POSE_REWARDS for k in self.weights):
      from wc_jax.rewards import call_with_model
      w2c = score_candidates(lambda f: call_with_model(_poses, self.pose_model, (f,)), frames, mesh=self.mesh)
      latents = gt_action_labels(poses[::pipeline_lib.FRAMES_PER_LATENT])     # the commanded labels, per latent
      acc = jax.vmap(interaction_scores, in_axes=(0, None))(w2c, latents)
      rot, trans = jax.vmap(camera_errors, in_axes=(0, None))(w2c, poses)
      every = {"fine_action": acc.fine_action_acc, "action": acc.action_acc, "camera_rotation": -rot,
               "camera_translation": -trans}
      out.update({k: v for k, v in every.items() if k in self.weights})
    first = jnp.asarray(first_frame, jnp.float32)
    if "drift" in self.weights:
      out["drift"] = score_candidates(lambda f: quality_drift_reward(f, self.scorer, first), frames, mesh=self.mesh)
    if "quality" in self.weights:
      out["quality"] = score_candidates(lambda f: quality_reward(f, self.scorer), frames, mesh=self.mesh)
    return {k: jnp.asarray(out[k], jnp.float32) for k in self.weights}


# ----------------------------------------------------------------------------- the backbone

def _cast_like(tree, like):
  return jax.tree.map(lambda x, r: jnp.asarray(x, r.dtype), tree, like)


class LingBotBackbone:
  """The LingBot-World backbone of wc_jax.rl.backbone: builds the pipeline (both experts, the Wan
  VAE), the rewards and the data from a config; `init_state` is the checkpointed train state
  ({expert: {params, policy, opt}} for each trained expert); `step` is one RL step."""

  def __init__(self, cfg, mesh=None, *, pipeline=None, rewards: LingBotRewards | None = None, data=None):
    validate(cfg, required=TRAIN_SECTIONS)
    if jax.process_count() > 1:
      raise NotImplementedError("LingBot-World RL runs in one process for now (one example per step)")
    self.cfg = cfg
    self.mesh = mesh
    self.experts = trained_experts(cfg.rl.get("expert", "low"))
    self.pipeline = pipeline if pipeline is not None else pipeline_lib.build_pipeline(cfg, mesh=mesh)
    if self.pipeline.single_expert:
      raise ValueError("LingBot-World RL needs both experts (one trained, the other frozen or trained too)")
    self.rewards = rewards if rewards is not None else LingBotRewards.from_config(cfg, mesh)
    self.data = data if data is not None else SyntheticClips.from_config(cfg)
    self.num_frames = pipeline_lib.frames_from_config(cfg)
    optim = tuple(sorted((k, float(v)) for k, v in cfg.optim.items()))
    self.programs = {e: _jitted_update(self.pipeline.apply, optim, tuple(sorted(update_settings(cfg, e).items())))
                     for e in self.experts}
    self.sigmas = {e: jnp.asarray(expert_sigmas(cfg, e)) for e in self.experts}

  def expert_state(self, name: str):
    return self.pipeline.low_state if name == "low" else self.pipeline.high_state

  def init_state(self) -> dict:
    state = {e: init_train_state(self.expert_state(e), self.programs[e][0]) for e in self.experts}
    if self.mesh is not None:
      from wc_jax import sharding
      return jax.device_put(state, sharding.state_shardings(state, self.mesh))
    return state

  def rollout_experts(self, state):
    """(low, high) states the sampler runs: the policy EMA of a trained expert, else the frozen one."""
    pick = lambda e: _cast_like(state[e]["policy"], self.expert_state(e)) if e in state else self.expert_state(e)
    return pick("low"), pick("high")

  def rollout(self, state, ex: Example, key):
    """G candidate latents [G, z, T, h, w] for one example, and their condition (y, context, cam)."""
    cfg, rl, pipe = self.cfg, self.cfg.rl, self.pipeline
    s = pipe.sampler
    img = pipe.image(ex.first_frame)
    h, w = img.shape[1:]
    y = pipe.condition(img, self.num_frames)
    cam = pipe.camera(ex.poses, ex.intrinsics, h, w, self.num_frames)
    ctx = pipeline_lib.check_states("text_states", ex.text_states, pipe.cfg.text_dim, pipe.cfg.text_len)
    ctx_null = pipeline_lib.check_states("negative_states", ex.negative_states, pipe.cfg.text_dim, pipe.cfg.text_len)
    g = int(rl.group_size)
    noise = jax.random.normal(key, (g, pipe.cfg.out_dim) + tuple(y.shape[2:]), jnp.float32)
    bc = lambda x: jnp.broadcast_to(x, (g,) + x.shape[1:])
    low, high = self.rollout_experts(state)
    x0 = unipc.sample(pipe.apply, low, high, noise, context=bc(ctx), context_null=bc(ctx_null), y=bc(y), cam=cam,
                      steps=int(rl.rollout_steps), shift=_shift(cfg), guide_scale=s.guide_scale, boundary=s.boundary,
                      num_train_timesteps=s.num_train_timesteps)
    first = (jnp.moveaxis(img, 0, -1) + 1.0) / 2.0
    return x0, y, ctx, cam, first

  def decode(self, latents):
    """[G, z, T, h, w] -> frames [G, F, H, W, 3] in [0, 1]."""
    v = wan_vae.decode(self.pipeline.vae, latents, chunk_latents=self.pipeline.vae_chunk_latents, clamp=True)
    return jnp.clip((jnp.moveaxis(v.astype(jnp.float32), 1, -1) + 1.0) / 2.0, 0.0, 1.0)

  def step(self, state, step: int):
    """One RL step -> (state, metrics, (frames [G, F, H, W, 3], combined scores [G]))."""
    cfg, rl = self.cfg, self.cfg.rl
    t0 = time.time()
    ex = next(self.data)
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    k_noise, k_sigma, k_update = jax.random.split(key, 3)
    x0, y, ctx, cam, first = self.rollout(state, ex, k_noise)
    x0 = jax.block_until_ready(x0)
    t1 = time.time()
    frames = self.decode(x0)
    scores = self.rewards(frames, first, ex.poses)
    scores = {k: jnp.asarray(np.asarray(v), jnp.float32) for k, v in scores.items()}
    t2 = time.time()
    weights = self.rewards.weights
    pooled = {k: v[None] for k, v in scores.items()}                        # [1, G]: one group
    grpo, adv_tg = step_advantages(pooled, weights, std_type=rl.get("std_type", "global"),
                                   best_of_n=int(rl.best_of_n), adv_clip=float(rl.adv_clip))
    kept = np.nonzero(np.asarray(grpo.kept[0]))[0]
    adv = adv_tg[0]                                                          # [G]
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in scores.values())
    m: dict[str, Any] = {}
    if finite:
      for i, e in enumerate(self.experts):
        k_e = jax.random.fold_in(k_update, i)
        sig = self.sigmas[e]
        n_sig = sigmas_per_sample(cfg, e)
        draw = jax.vmap(lambda k: jax.random.permutation(k, sig)[:n_sig])(
            jax.random.split(jax.random.fold_in(k_sigma, i), len(kept)))
        state[e], me = self.programs[e][1](state[e], x0[kept], y, ctx, cam, draw, adv[kept], k_e)
        m.update({f"{name}/{e}": float(v) for name, v in me.items()})
      m["loss"] = float(np.mean([m[f"loss/{e}"] for e in self.experts]))
      m["optimizer_step_applied"] = 1
    else:
      m = {"skipped_nonfinite": 1, "optimizer_step_applied": 0}
    t3 = time.time()
    out = {"step": step, "clip": 1, "trajectories": 1, "candidates": int(rl.group_size), "kept": int(len(kept)),
           "dit_calls": 2 * int(rl.group_size) * int(rl.rollout_steps), "experts_trained": "+".join(self.experts),
           "time_rollout": t1 - t0, "time_reward": t2 - t1, "time_update": t3 - t2, **m,
           **reward_metrics(pooled, grpo, adv_tg)}
    out["trajectory"] = ex.id
    return state, out, (np.asarray(frames), np.asarray(grpo.combined[0]))
