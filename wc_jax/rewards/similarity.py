"""RWML-style "sim-to-real gap" reward (arXiv 2602.05842).

When a real continuation of the context exists (a recorded video), the reward
is the similarity, in a pretrained embedding space, between the generated clip
and the real clip. It is dense by default; with a threshold it becomes the
binary "close enough to reality" signal of the paper.

Group rules (`RwmlRule`, applied by `wc_jax.rewards.stage.RewardStage` and the
synthetic world's stage): binarisation at the threshold and the easy-sample
filter. Encoders besides the CLIP scorer's tower: `DA3Embedder` (the pose
model's backbone) and `HPSv3Embedder` (HPSv3's vision tower).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.rewards import _checks, _model

Encoder = Callable[[jax.Array], jax.Array]
POOLINGS = ("frame", "clip")


def _cosine(a, b, eps=1e-8):
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  return jnp.sum(a * b, axis=-1)


def _similarity_impl(encoder, generated, real, threshold, *, pooling, offset, stride,
                     binarize):
  fn = "embedding_similarity_reward"
  _checks.check_images(fn, "generated", generated)
  _checks.check_images(fn, "real", real)
  if generated.shape != real.shape:
    raise ValueError(f"{fn}: generated and real must have the same [F,H,W,3] shape, got "
                     f"{tuple(generated.shape)} and {tuple(real.shape)}")
  idx = jnp.arange(offset, generated.shape[0], stride)
  n = idx.shape[0]
  if n == 0:
    raise ValueError(f"{fn}: {generated.shape[0]} frames have none at {offset}::{stride}")
  both = jnp.concatenate([generated[idx], real[idx].astype(generated.dtype)], axis=0)
  emb = encoder(both)
  s = _checks.shape_of(emb)
  if len(s) != 2 or s[0] != 2 * n:
    raise ValueError(f"{fn}: encoder must map [N,H,W,3] images to [N,D] embeddings (N={2 * n}), "
                     f"got shape {s}")
  emb = jnp.asarray(emb, jnp.float32)
  g, r = emb[:n], emb[n:]
  if pooling == "frame":
    sim = jnp.mean(_cosine(g, r))
  else:
    sim = _cosine(jnp.mean(g, axis=0), jnp.mean(r, axis=0))
  if binarize:
    return (sim >= threshold).astype(jnp.float32)
  return sim


def embedding_similarity_reward(generated, real, encoder: Encoder, *, pooling: str = "frame",
                                threshold: float | None = None, offset: int = 0,
                                stride: int = 1):
  """Similarity of a generated clip to the real continuation (jit-compiled).

  Args:
    generated: [F,H,W,3] generated frames.
    real: [F,H,W,3] real frames, aligned with `generated`.
    encoder: images [N,H,W,3] -> embeddings [N,D]; an nnx.Module (weights
      traced, e.g. `ClipAestheticScorer.vision`) or a hashable callable.
    pooling: "frame" = mean over frames of the per-frame cosine similarity;
      "clip" = cosine similarity of the frame-averaged embeddings.
    threshold: if given, the reward is 1.0 where similarity >= threshold, else
      0.0 (RWML's binarised reward).
    offset, stride: which frames are embedded (default all).

  Returns:
    float32 scalar in [-1,1] (or {0,1} with a threshold).
  """
  if pooling not in POOLINGS:
    raise ValueError(f"embedding_similarity_reward: pooling must be one of {POOLINGS}, "
                     f"got {pooling!r}")
  if stride < 1 or offset < 0:
    raise ValueError(f"embedding_similarity_reward: need offset >= 0 and stride >= 1, "
                     f"got offset={offset} stride={stride}")
  thr = jnp.asarray(0.0 if threshold is None else threshold, jnp.float32)
  return _model.call_with_model(
      _similarity_impl, encoder, (generated, real, thr),
      {"pooling": pooling, "offset": offset, "stride": stride, "binarize": threshold is not None})


# ----------------------------------------------------------------------------- RWML's group rules

def binarize(similarity, threshold: float):
  """RWML's binary reward: 1.0 where similarity >= threshold, else 0.0 (float32, same shape)."""
  return (jnp.asarray(similarity, jnp.float32) >= jnp.float32(threshold)).astype(jnp.float32)


def easy_groups(similarity, threshold: float):
  """RWML's easy-sample rule on a group of candidates: [..., G] similarities -> [...] bool, True
  where EVERY candidate of the group already reaches `threshold` (the model gets this
  continuation right whatever the noise: nothing to learn from it)."""
  s = jnp.asarray(similarity, jnp.float32)
  if s.ndim < 1 or s.shape[-1] < 1:
    raise ValueError(f"easy_groups: similarity must be [..., G] with G >= 1 candidates, got shape {s.shape}")
  return jnp.all(s >= jnp.float32(threshold), axis=-1)


def filter_easy_groups(scores: dict, easy) -> dict:
  """Drops easy groups from the ranking: in a group marked `easy` ([...] bool) every reward of
  `scores` (name -> [..., G]) is replaced by its group mean, so the group's candidates all get
  advantage 0 under every std_type (`rewards.advantages.group_advantages`) and none is preferred;
  other groups are returned unchanged. (A GRPO/NFT batch keeps its shape: the group stays in the
  update with zero advantage rather than being cut out of it.)"""
  easy = jnp.asarray(easy, bool)
  out = {}
  for k, v in scores.items():
    v = jnp.asarray(v, jnp.float32)
    if v.shape[:-1] != easy.shape:
      raise ValueError(f"filter_easy_groups: score {k!r} has shape {v.shape}; easy needs its group shape "
                       f"{v.shape[:-1]}, got {easy.shape}")
    out[k] = jnp.where(easy[..., None], jnp.mean(v, axis=-1, keepdims=True), v)
  return out


@dataclasses.dataclass(frozen=True)
class RwmlRule:
  """RWML's group rules for one reward of a reward stage. `similarity` scores ONE candidate with
  the raw (dense) similarity (frames, window) -> float32 []; the stage calls it instead of the
  reward's own function (one encoder pass) and derives the reward with `apply_rwml`."""
  reward: str                         # the reward's name in the stage (e.g. "embedding_similarity")
  similarity: Callable
  threshold: float = 0.5
  binarize: bool = True               # the reward is 1.0 at or above `threshold`, else 0.0
  filter_easy: bool = True            # drop groups whose candidates ALL reach `easy_threshold`
  easy_threshold: float | None = None  # None: `threshold`


def apply_rwml(scores: dict, rule: RwmlRule) -> dict:
  """One group's scores (name -> [G]; scores[rule.reward] the raw similarities) with RWML's rules:
  `<reward>` the reward (binarised when rule.binarize), `<reward>_raw` the similarity (logged), and
  with filter_easy the easy group dropped from the ranking (`filter_easy_groups`: every score set to
  its group mean) and `<reward>_easy` (1.0 on every candidate of an easy group, logged)."""
  sim = jnp.asarray(scores[rule.reward], jnp.float32)
  if sim.ndim != 1:
    raise ValueError(f"apply_rwml: {rule.reward!r} must be one group's [G] similarities, got shape {sim.shape}")
  out = dict(scores)
  out[rule.reward] = binarize(sim, rule.threshold) if rule.binarize else sim
  out[f"{rule.reward}_raw"] = sim
  if rule.filter_easy:
    thr = rule.threshold if rule.easy_threshold is None else rule.easy_threshold
    easy = easy_groups(sim[None], thr)                                  # [1]
    out = {k: v[0] for k, v in filter_easy_groups({k: jnp.asarray(v)[None] for k, v in out.items()}, easy).items()}
    out[f"{rule.reward}_easy"] = jnp.broadcast_to(easy[0].astype(jnp.float32), sim.shape)
  return out


# ----------------------------------------------------------------------------- encoders

class DA3Embedder(nnx.Module):
  """The pose model's Depth Anything 3 backbone as an image encoder: images [N,H,W,3] in [0,1] ->
  [N, feature_dim], the mean over patches of the last `out_layers` features. Each image is its own
  one-view scene (generated and real frames are embedded in one batch and must not attend to each
  other through DA3's cross-view attention). Preprocessing as the pose model's (resize, quantise,
  ImageNet normalisation)."""

  def __init__(self, pose_model: Any):
    model = getattr(pose_model, "model", None)
    if model is None or not hasattr(model, "backbone"):
      raise ValueError(f"DA3Embedder: needs the pose model (wc_jax.models.da3.PoseModel), got "
                       f"{type(pose_model).__name__}")
    self.model = model
    self.process_res = pose_model.process_res
    self.process_res_method = pose_model.process_res_method
    self.quantize = pose_model.quantize

  def __call__(self, images):
    from wc_jax.models.da3 import preprocess as da3_preprocess   # here: importing rewards stays light
    x = da3_preprocess.preprocess(images, self.process_res, self.process_res_method, self.quantize)   # [1,N,...]
    x = x.reshape((-1, 1) + x.shape[2:])                                                               # [N,1,...]
    feats, _, _ = self.model.backbone(x)
    return jnp.mean(feats[-1][:, 0].astype(jnp.float32), axis=1)


class HPSv3Embedder(nnx.Module):
  """HPSv3's vision tower (Qwen2-VL's ViT + patch merger) as an image encoder: images [N,H,W,3] in
  [0,1] -> [N, D], the mean of each image's merged tokens; the scorer's pixel budget and
  preprocessing (uint8 rounding, resize, normalisation)."""

  def __init__(self, scorer: Any):
    model = getattr(scorer, "model", None)
    if model is None or not hasattr(model, "visual"):
      raise ValueError(f"HPSv3Embedder: needs the HPSv3 scorer (wc_jax.rewards.hpsv3.HPSv3Scorer), got "
                       f"{type(scorer).__name__}")
    self.visual = model.visual
    self.min_pixels, self.max_pixels = scorer.min_pixels, scorer.max_pixels

  def __call__(self, images):
    from wc_jax.models.qwen2vl import processor as qwen_processor
    n = images.shape[0]
    pv, grid, _ = qwen_processor.preprocess(qwen_processor.to_uint8(images), self.min_pixels, self.max_pixels)
    tokens = self.visual(pv, grid)                                        # [N * tokens per image, D]
    return jnp.mean(tokens.astype(jnp.float32).reshape(n, -1, tokens.shape[-1]), axis=1)
