"""Rewards that work in the synthetic world: an IDM trained on ground truth, and a drift term.

* `idm`: SWIRL's learned interaction reward. An inverse-dynamics model
  (`wc_jax.models.idm`, one frame per step here) is trained on rendered clips with
  their commanded labels; a candidate's reward is the IDM's mean log-likelihood of the
  commanded actions (`wc_jax.rewards.idm_reward`, clamped at -10).
* `drift`: the paper's quality drift with fixed, model-free statistics of each frame:
  detail Q = mean image-gradient magnitude (a generator that blurs loses it, one that
  adds noise gains it) and the mean colour (a generator that drifts in colour, a
  failure seen in early runs here, moves it). The reward is
  -mean_k (|Q(frame_k) - Q(first)| / Q(first) + sum_c |mean_c(frame_k) - mean_c(first)|).

* `rwml`: RWML's sim-to-real reward (arXiv 2602.05842): the similarity, in a fixed embedding
  space (`rewards.rwml.encoder`: a fixed random conv net, or raw pooled pixels), between each
  candidate's new frames and the real continuation (`WorldTrajectories` attaches the world's true
  frames), binarised at `threshold`; a group whose candidates ALL reach `easy_threshold` is too easy
  and is filtered out of the ranking (`rewards.similarity.filter_easy_groups`). `WorldRewardStage`.
  `rewards.rwml.metric = "psnr"` replaces the embedding's cosine by the pixel PSNR (dB) to the real
  frames: the ablation with no embedding at all (thresholds then in dB).
* SWIRL's alternation: `make_swirl_stage` wraps the stage so that the `idm` reward's IDM is trained
  on the policy's generations on a schedule (`wc_jax.rl.swirl`).

The evaluation uses a second IDM trained from another seed on other scenes, so the
reported accuracy is not the number RL optimised (see `evaluate`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models import idm as idm_lib
from wc_jax.rewards.advantages import shuffle_within_groups
from wc_jax.rewards.idm import idm_reward
from wc_jax.rewards.similarity import binarize, easy_groups, filter_easy_groups
from wc_jax.rewards.stage import RewardStage
from wc_jax.rl import swirl as swirl_lib
from wc_jax.rl.config import ConfigError
from wc_jax.world import judge


def idm_config(cfg) -> idm_lib.IDMConfig:
  return idm_lib.IDMConfig(in_channels=3, frames_per_step=1, widths=tuple(cfg.idm.widths), hidden=int(cfg.idm.hidden))


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Light augmentation so a ground-truth IDM also reads generated frames: per clip, a
  random mix with a 2x2-blurred copy and a little noise."""
  n, t, h, w, c = frames.shape
  blur = frames.reshape(n, t, h // 2, 2, w // 2, 2, c).mean((3, 5)).repeat(2, 2).repeat(2, 3)
  a = rng.uniform(0, 1, (n, 1, 1, 1, 1)) * (rng.uniform(size=(n, 1, 1, 1, 1)) < 0.5)
  out = (1 - a) * frames + a * blur + rng.normal(0, 0.02, frames.shape) * (rng.uniform(size=(n, 1, 1, 1, 1)) < 0.5)
  return np.clip(out, 0, 1).astype(np.float32)


def train_idm(frames: np.ndarray, actions: np.ndarray, cfg, seed: int, steps: int | None = None,
              log=print) -> tuple[idm_lib.InverseDynamicsModel, list]:
  """Fits an IDM on clips frames [N, L, H, W, 3] with labels [N, L]. Returns (model, history)."""
  if frames.ndim != 5 or actions.shape != frames.shape[:2]:
    raise ValueError(f"train_idm: need frames [N,L,H,W,3] and actions [N,L], got {frames.shape} and {actions.shape}")
  steps = int(cfg.idm.steps if steps is None else steps)
  model = idm_lib.init_idm(idm_config(cfg), seed=seed)
  opt = idm_lib.make_optimizer(model, learning_rate=float(cfg.idm.lr))
  rng = np.random.default_rng(seed)
  bs = min(int(cfg.idm.batch_size), len(frames))

  def batches():
    while True:
      idx = rng.choice(len(frames), bs, replace=False)
      yield degrade(frames[idx], rng), actions[idx]

  hist = idm_lib.fit(model, batches(), steps, opt)
  if hist:
    log(f"idm seed {seed}: {steps} steps, loss {np.mean([h[0] for h in hist[-20:]]):.3f}, "
        f"train acc {np.mean([h[1] for h in hist[-20:]]):.3f}")
  return model, hist


def save_idm(model, path) -> None:
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(state)}
  np.savez(path, **flat)


def load_idm(path, cfg) -> idm_lib.InverseDynamicsModel:
  model = idm_lib.init_idm(idm_config(cfg), seed=0)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  z = np.load(path)
  for k, _ in _flatten(pure):
    _set(pure, k, jnp.asarray(z["/".join(map(str, k))]))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def _flatten(d, prefix=()):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(d, path, value):
  for k in path[:-1]:
    d = d[k]
  d[path[-1]] = value


def sharpness(frames):
  """Q: mean absolute image gradient per frame, [..., H, W, 3] -> [...]."""
  gx = jnp.abs(jnp.diff(frames, axis=-2)).mean((-1, -2, -3))
  gy = jnp.abs(jnp.diff(frames, axis=-3)).mean((-1, -2, -3))
  return gx + gy


def drift_reward(frames, first):
  """Detail and colour drift from the first frame, for one candidate's frames [F, H, W, 3]."""
  q0 = sharpness(first)
  detail = jnp.abs(sharpness(frames) - q0) / jnp.maximum(q0, 1e-3)                  # [F]
  colour = jnp.sum(jnp.abs(frames.mean((1, 2)) - first.mean((0, 1))), axis=-1)       # [F]
  return -jnp.mean(detail + colour)


def predicted_actions(idm, frames):
  """IDM argmax labels of every step of clips [B, F, H, W, 3] -> [B, F-1]."""
  return jnp.argmax(idm(frames), axis=-1)


WORLD_REWARDS = ("idm", "drift", "rwml")


def make_reward_stage(latent, idm, weights: dict, rwml=None) -> RewardStage:
  """The trainer's reward stage: decode = the latent map's inverse; rewards idm, drift and rwml
  (`rwml`: the `rewards.rwml` section, defaults for the missing keys; see `rwml_options`)."""
  unknown = set(weights) - set(WORLD_REWARDS)
  if unknown:
    raise ValueError(f"make_reward_stage: unknown rewards {sorted(unknown)} (have: {', '.join(WORLD_REWARDS)})")
  decode = jax.jit(latent.decode)
  fns = {"idm": lambda frames, window: idm_reward(frames, window.actions, idm),
         "drift": lambda frames, window: drift_reward(frames, window.first_frame)}
  w = {k: float(v) for k, v in weights.items()}
  per_candidate = {k: fns[k] for k in weights if k != "rwml"}
  if "rwml" in weights:
    opts = rwml_options(rwml)
    encoder = None if opts["metric"] == "psnr" else make_encoder(opts["encoder"], opts["seed"])
    return WorldRewardStage(decode=decode, rewards=per_candidate, weights=w, rwml=opts,
                            encoder=encoder, frames_per_latent=1)
  return RewardStage(decode=decode, rewards=per_candidate, weights=w, frames_per_latent=1)   # a frame per latent


# ----------------------------------------------------------------------------- RWML in the world

RWML_ENCODERS = ("random_conv", "pixels")
RWML_METRICS = ("cosine", "psnr")     # cosine in the encoder's embedding | pixel PSNR in dB (no encoder)
RWML_DEFAULTS = dict(encoder="random_conv", threshold=0.7, binarize=True, filter_easy=True, easy_threshold=-1.0,
                     seed=0, metric="cosine")
PSNR_RANGE = (0.0, 100.0)             # judge.psnr caps identical images at 100 dB


def rwml_options(section: Any = None) -> dict:
  """The `rewards.rwml` section with defaults, validated: a bad value raises ConfigError naming it.
  easy_threshold -1.0 (the default) means "the binarisation threshold" (a literal -1 would mark every
  group easy, which is never wanted)."""
  d = dict(RWML_DEFAULTS)
  if section is not None:
    given = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    for k in given:
      if k not in RWML_DEFAULTS:
        raise ConfigError(f"rewards.rwml.{k}", given[k], f"unknown key (known: {', '.join(sorted(RWML_DEFAULTS))})")
    d.update(given)
  if d["encoder"] not in RWML_ENCODERS:
    raise ConfigError("rewards.rwml.encoder", d["encoder"], f"must be one of {', '.join(RWML_ENCODERS)}")
  if d["metric"] not in RWML_METRICS:
    raise ConfigError("rewards.rwml.metric", d["metric"], f"must be one of {', '.join(RWML_METRICS)}")
  lo, hi, what = (-1.0, 1.0, "a cosine similarity") if d["metric"] == "cosine" else (*PSNR_RANGE, "a PSNR in dB")
  for k in ("threshold", "easy_threshold"):
    v = d[k]
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (lo <= v <= hi or (k == "easy_threshold" and v == -1.0))
    if not ok:
      raise ConfigError(f"rewards.rwml.{k}", v, f"must be a number in [{lo:g}, {hi:g}] ({what}, metric {d['metric']!r})")
  for k in ("binarize", "filter_easy"):
    if not isinstance(d[k], bool):
      raise ConfigError(f"rewards.rwml.{k}", d[k], "must be True or False")
  if isinstance(d["seed"], bool) or not isinstance(d["seed"], int) or d["seed"] < 0:
    raise ConfigError("rewards.rwml.seed", d["seed"], "must be an integer >= 0")
  d["threshold"] = float(d["threshold"])
  d["easy_threshold"] = float(d["threshold"] if d["easy_threshold"] == -1.0 else d["easy_threshold"])
  return d


class RandomConvEncoder(nnx.Module):
  """A fixed, random conv net: frames [N,H,W,3] in [0,1] -> [N,D] embeddings, D = widths[-1] * 9
  (features average-pooled onto a 3x3 grid, so the layout counts, then centred: cosine similarity
  is then a correlation and unrelated frames score near 0). Never trained: the "pretrained"
  embedding space of the synthetic world."""

  def __init__(self, widths=(16, 32), seed: int = 0):
    rng = np.random.default_rng([seed, 0xE4C])
    c, kernels = 3, []
    for w in widths:
      kernels.append(nnx.Param(jnp.asarray(rng.standard_normal((3, 3, c, w)).astype(np.float32) / np.sqrt(9 * c))))
      c = w
    self.kernels = nnx.List(kernels)

  def __call__(self, x):
    h = 2.0 * jnp.asarray(x, jnp.float32) - 1.0
    for k in self.kernels:
      h = jax.lax.conv_general_dilated(h, k[...], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jnp.tanh(h)
    return _grid_embed(h)


def _grid_embed(h):
  """[N,H,W,C] -> [N, 9C]: means over a 3x3 grid of regions, centred per embedding."""
  rows = [(r[0], r[-1] + 1) for r in np.array_split(np.arange(h.shape[1]), 3)]
  cols = [(q[0], q[-1] + 1) for q in np.array_split(np.arange(h.shape[2]), 3)]
  cells = [h[:, r0:r1, q0:q1].mean((1, 2)) for r0, r1 in rows for q0, q1 in cols]
  e = jnp.concatenate(cells, axis=-1)
  return e - e.mean(-1, keepdims=True)


class PixelEncoder(nnx.Module):
  """Raw pixels on a 3x3 grid of mean colours (27 values, centred): the embedding-free baseline."""

  def __call__(self, x):
    return _grid_embed(jnp.asarray(x, jnp.float32))


def make_encoder(kind: str, seed: int = 0) -> nnx.Module:
  if kind == "random_conv":
    return RandomConvEncoder(seed=seed)
  if kind == "pixels":
    return PixelEncoder()
  raise ValueError(f"make_encoder: encoder must be one of {RWML_ENCODERS}, got {kind!r}")


def _similarities_impl(encoder, generated, real):
  g, f = generated.shape[:2]
  emb = encoder(jnp.concatenate([generated.reshape((g * f,) + generated.shape[2:]), real], axis=0))
  emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-8)
  ge, re = emb[:g * f].reshape(g, f, -1), emb[g * f:]
  return jnp.mean(jnp.sum(ge * re[None], axis=-1), axis=-1)


@nnx.jit
def clip_similarities(encoder, generated, real):
  """RWML's similarity of each candidate to the real continuation: generated [G,F,H,W,3], real
  [F,H,W,3] -> [G], the mean over frames of the embeddings' cosine similarity."""
  return _similarities_impl(encoder, generated, real)


def rwml_scores(similarity, opts: dict) -> dict:
  """{'rwml': the reward (binarised at `threshold` when `binarize`), 'rwml_similarity': the raw
  similarity (logged)} for one group [G]."""
  sim = jnp.asarray(similarity, jnp.float32)
  return {"rwml": binarize(sim, opts["threshold"]) if opts["binarize"] else sim, "rwml_similarity": sim}


def real_window(r, n_frames: int, real_frames) -> np.ndarray:
  """The real frames aligned with the `n_frames` decoded window frames of clip r.clip: ONE frame
  per latent in this world, so latents stop - n_frames .. stop - 1, stop = the clip's last latent + 1
  (`rewards.stage.window_frame_range` counts 4 video frames per latent: not this world's)."""
  chunk = int(np.shape(r.x0)[2])
  stop = r.clip * chunk
  real = np.asarray(real_frames)
  if real.ndim != 4 or real.shape[0] < stop or stop - n_frames < 0:
    raise ValueError(f"the trajectory's real frames have shape {real.shape}; clip {r.clip} needs latents "
                     f"{stop - n_frames}..{stop - 1} (one frame per latent)")
  real = real[stop - n_frames:stop]
  return real.astype(np.float32) / 255.0 if real.dtype == np.uint8 else real.astype(np.float32)


@dataclasses.dataclass
class WorldRewardStage(RewardStage):
  """The world's reward stage with RWML: the per-candidate rewards as `RewardStage`, then the
  group's RWML scores against the real continuation of the clip and the easy-group filter.
  Real frames are ONE per latent here (the patch latent), so the stage slices them itself."""
  rwml: dict = dataclasses.field(default_factory=dict)        # rwml_options(...): every key filled in
  encoder: Any = None

  def real_window(self, r, n_frames: int, real_frames) -> np.ndarray:
    return real_window(r, n_frames, real_frames)

  def __call__(self, r, first_latent_window, real_frames=None):
    scores, frames = RewardStage.__call__(self, r, first_latent_window, None)
    if real_frames is None:
      raise ValueError("reward 'rwml' compares with the real continuation, but the trajectory has no real frames: "
                       "build WorldTrajectories with real_frames=True")
    chunk = int(np.shape(r.x0)[2])
    real = self.real_window(r, chunk, real_frames)                 # the clip's new latents only
    if self.rwml["metric"] == "psnr":                 # the judge's PSNR, mean over the frames
      sim = jnp.asarray(judge.psnr(np.asarray(frames[:, -chunk:]), real[None]).mean(-1), jnp.float32)
    else:
      sim = clip_similarities(self.encoder, frames[:, -chunk:], jnp.asarray(real))
    scores = {**scores, **rwml_scores(sim, self.rwml)}
    if self.rwml["filter_easy"]:
      easy = easy_groups(sim[None], self.rwml["easy_threshold"])   # [1]
      scores = {k: v[0] for k, v in filter_easy_groups({k: jnp.asarray(v)[None] for k, v in scores.items()},
                                                        easy).items()}
      scores["rwml_easy"] = jnp.broadcast_to(easy[0].astype(jnp.float32), sim.shape)
    return scores, frames


def make_swirl_stage(stage, idm, cfg, log=None):
  """`stage` (whose idm reward reads `idm`) with SWIRL's alternation from `cfg.swirl` (validated);
  `stage` unchanged when the section is missing or disabled. The world has one frame per latent."""
  return swirl_lib.wrap_reward_stage(stage, idm, cfg, real_window=real_window, log=log)


class ShuffledRewardStage:
  """The shuffled-reward control run: a reward stage whose scores are permuted within
  each group (`rewards.advantages.shuffle_within_groups`) before the trainer sees them.
  Same rollouts, rewards, advantage statistics and update size as the real run; no link
  between a candidate and its reward. Deterministic in (seed, call count)."""

  def __init__(self, stage: RewardStage, seed: int):
    self.stage, self.seed, self.calls = stage, int(seed), 0

  def __getattr__(self, name):
    return getattr(self.stage, name)

  def __call__(self, *args, **kwargs):
    scores, frames = self.stage(*args, **kwargs)
    key = jax.random.fold_in(jax.random.key(self.seed), self.calls)
    self.calls += 1
    shuffled = shuffle_within_groups({k: jnp.asarray(v)[None] for k, v in scores.items()}, key)
    return {k: v[0] for k, v in shuffled.items()}, frames

  # the checkpoint protocol (wc_jax.rl.checkpoint): a resumed control permutes as an uninterrupted one
  def get_state(self) -> dict:
    state = {"calls": self.calls}
    inner = getattr(self.stage, "get_state", None)
    if callable(inner):
      state["inner"] = inner()
    return state

  def set_state(self, state: dict) -> None:
    self.calls = int(state["calls"])
    if "inner" in state:
      self.stage.set_state(state["inner"])

