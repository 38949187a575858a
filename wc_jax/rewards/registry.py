"""Config names -> reward callables and default weights.

The released WorldCompass configuration trains on `fine_action` (weight 2.0)
and `drift` (weight 1.0); the other rewards are computed for logging (weight
0) or offered as options. Weights are raw: `prepare_grpo` ranks with them as
given and `nft_advantage` normalises them (2/3, 1/3) for the loss.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

from wc_jax.rewards.idm import LOG_LIKELIHOOD_FLOOR, idm_reward
from wc_jax.rewards.interaction import interaction_reward
from wc_jax.rewards.quality import quality_drift_reward, quality_reward
from wc_jax.rewards.similarity import embedding_similarity_reward


@dataclasses.dataclass(frozen=True)
class RewardWindow:
  """What a reward may read about the scored window besides each candidate's frames."""
  first_frame: Any               # [H,W,3] in [0,1]: the trajectory's first frame (the drift reference)
  actions: Any                   # [L] int32 commanded labels of the window's latents
  real: Any = None               # [F,H,W,3] in [0,1]: the window's real frames (data with video), or None


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """A named reward: its one-candidate callable, argument names, default weight, and how the
  RL reward stage calls it (`model`: the reward model it needs, built once from the config
  section named in `section`; `score(model, frames, window, options) -> scalar`)."""
  name: str
  fn: Callable
  args: tuple[str, ...]
  weight: float
  doc: str
  model: str | None = None       # "pose" | "scorer" | "encoder" | "idm"
  score: Callable | None = None  # (model, frames [F,H,W,3], RewardWindow, options: Mapping) -> float32 []
  reads_real: bool = False       # compares with the window's real frames (data with video)


def _real(name: str, window: RewardWindow):
  if window.real is None:
    raise ValueError(f"reward {name!r} compares with the real continuation of the window, but the data "
                     "has no video: use records written with frames (write_records from videos) or "
                     "data.source='synthetic_world'")
  return window.real


def _action_score(kind):
  return lambda pose_model, frames, w, o: interaction_reward(frames, w.actions, pose_model, kind=kind)


REWARDS: dict[str, RewardSpec] = {
    "fine_action": RewardSpec(
        "fine_action", functools.partial(interaction_reward, kind="fine_action"),
        ("frames", "commanded_actions", "pose_model"), 2.0,
        "mean of translation and rotation label accuracy (released action reward)",
        model="pose", score=_action_score("fine_action")),
    "action": RewardSpec(
        "action", functools.partial(interaction_reward, kind="action"),
        ("frames", "commanded_actions", "pose_model"), 0.0,
        "81-way label accuracy (reference action_reward_type='action')",
        model="pose", score=_action_score("action")),
    "drift": RewardSpec(
        "drift", quality_drift_reward, ("frames", "scorer", "first_frame"), 1.0,
        "-mean |Q(frame_k) - Q(first frame)| over window frames 3::4",
        model="scorer", score=lambda scorer, frames, w, o: quality_drift_reward(frames, scorer, w.first_frame)),
    "quality": RewardSpec(
        "quality", quality_reward, ("frames", "scorer"), 0.0,
        "mean Q over window frames 3::4 (reference hpsv3_quality, fixed prompt)",
        model="scorer", score=lambda scorer, frames, w, o: quality_reward(frames, scorer)),
    "prompt_quality": RewardSpec(
        "prompt_quality", quality_reward, ("frames", "scorer"), 0.0,
        "mean Q over window frames 3::4 with a caption-conditioned scorer (reference hpsv3)"),
    "embedding_similarity": RewardSpec(
        "embedding_similarity", embedding_similarity_reward, ("generated", "real", "encoder"), 0.0,
        "RWML: cosine similarity to the real continuation in an embedding space (options: "
        "SIMILARITY_OPTIONS), 1.0 at or above `threshold` when `binarize`; the easy-group filter is a "
        "group rule of the reward stage (similarity.RwmlRule)",
        model="encoder", reads_real=True, score=lambda enc, frames, w, o: embedding_similarity_reward(
            frames, _real("embedding_similarity", w), enc, pooling=str(o.get("pooling", "frame")),
            threshold=float(o.get("threshold", 0.5)) if o.get("binarize", False) else None)),
    "idm": RewardSpec(
        "idm", idm_reward, ("clip", "commanded_actions", "idm"), 0.0,
        "SWIRL: inverse-dynamics log-likelihood of the commanded action, clamped at -10",
        model="idm", score=lambda idm, frames, w, o: idm_reward(
            frames, w.actions, idm, floor=float(o.get("floor", LOG_LIKELIHOOD_FLOOR)))),
}

# `rewards.similarity` (the embedding_similarity reward's section) and its defaults: the encoder
# ("quality": the CLIP scorer's vision tower; "pose": the pose model's DA3 backbone, pooled;
# "hpsv3": HPSv3's vision tower, with rewards.quality.scorer='hpsv3'), the pooling over frames,
# RWML's binarisation and its easy-sample filter (easy_threshold -1.0: = threshold).
SIMILARITY_ENCODERS = ("quality", "pose", "hpsv3")
SIMILARITY_OPTIONS = dict(encoder="quality", pooling="frame", binarize=False, threshold=0.5, filter_easy=False,
                          easy_threshold=-1.0)

# The reference's reward names (fixture files, training args) -> ours.
ALIASES = {
    "fine_action_reward": "fine_action",
    "action_reward": "action",
    "hpsv3_quality_drift": "drift",
    "hpsv3_quality_drift_reward": "drift",
    "hpsv3_quality": "quality",
    "hpsv3_quality_reward": "quality",
    "hpsv3": "prompt_quality",
    "hpsv3_reward": "prompt_quality",
    "rwml": "embedding_similarity",
    "swirl": "idm",
}


def register(spec: RewardSpec) -> None:
  """Adds (or replaces) a named reward, e.g. a learned IDM reward."""
  REWARDS[spec.name] = spec


def get_reward(name: str) -> RewardSpec:
  key = ALIASES.get(name, name)
  if key not in REWARDS:
    raise KeyError(f"unknown reward {name!r}; known: {sorted(REWARDS)} "
                   f"(reference names: {sorted(ALIASES)})")
  return REWARDS[key]


def default_weights() -> dict[str, float]:
  """Non-zero default weights: {'fine_action': 2.0, 'drift': 1.0}."""
  return {k: s.weight for k, s in REWARDS.items() if s.weight}


def weights_from_reference_config(cfg: Mapping) -> dict[str, float]:
  """Maps the reference's training args to reward weights.

  Uses action_reward_type ('fine_action' or 'action'), action_reward_weight,
  hpsv3_reward_weight, hpsv3_quality_reward_weight and
  hpsv3_quality_drift_reward_weight (missing ones count as 0).
  """
  kind = cfg.get("action_reward_type", "fine_action")
  if kind not in ("fine_action", "action"):
    raise ValueError(f"action_reward_type must be 'fine_action' or 'action', got {kind!r}")
  return {
      kind: float(cfg.get("action_reward_weight", 0.0)),
      "prompt_quality": float(cfg.get("hpsv3_reward_weight", 0.0)),
      "quality": float(cfg.get("hpsv3_quality_reward_weight", 0.0)),
      "drift": float(cfg.get("hpsv3_quality_drift_reward_weight", 0.0)),
  }
