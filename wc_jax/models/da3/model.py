"""DepthAnything3Net in Flax NNX, and the pose estimator the interaction reward calls.

    model = load_model(kinds.DA3, path)    # the checkpoint layer (convert/); models do no file I/O
    out = estimate_poses(model, frames)    # frames [F, H, W, 3] uint8 or in [0, 1]
    out["w2c"]                             # [F, 3, 4] float32, OpenCV axes, world = reference view

`init_model(cfg, seed)` gives random weights; `abstract_model(cfg)` shapes only.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.da3.camera import (CameraDec, CameraEnc, affine_inverse,
                                      pose_encoding_to_extri_intri)
from wc_jax.models.da3.config import REF_VIEW_STRATEGIES, DA3Config
from wc_jax.models.da3.dpt import DualDPT
from wc_jax.models.da3.layers import Keys, as_keys
from wc_jax.models.da3.preprocess import check_frames, preprocess
from wc_jax.models.da3.vit import DinoViT

Array = jax.Array


class DepthAnything3(nnx.Module):
  """Backbone + DualDPT head + camera decoder/encoder (reference DepthAnything3Net)."""

  def __init__(self, cfg: DA3Config, *, rngs: nnx.Rngs | Keys | int):
    self.cfg = cfg
    rngs = as_keys(rngs)
    self.backbone = DinoViT(cfg, rngs=rngs)
    self.head = DualDPT(cfg, rngs=rngs)
    self.cam_dec = CameraDec(cfg.feature_dim, rngs=rngs) if cfg.has_camera else None
    self.cam_enc = CameraEnc(cfg, rngs=rngs) if cfg.has_camera else None

  def check_images(self, images) -> None:
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 5:
      raise ValueError(f"images must be [B, S, H, W, 3], got shape {shape}")
    if shape[-1] != 3:
      raise ValueError(f"images must have 3 channels last ([B, S, H, W, 3]), got shape {tuple(shape)}")
    p = self.cfg.patch_size
    if shape[2] % p or shape[3] % p or shape[2] < p or shape[3] < p:
      raise ValueError(f"image height and width must be positive multiples of the patch size {p}, "
                       f"got {shape[2]}x{shape[3]}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images must be floating point (ImageNet-normalised), got dtype {images.dtype}")

  def __call__(self, images: Array, extrinsics: Array | None = None,
               intrinsics: Array | None = None,
               ref_view_strategy: str = "saddle_balanced") -> dict[str, Array]:
    """images [B, S, H, W, 3], ImageNet-normalised.

    Returns depth, depth_conf [B, S, H, W]; ray [B, S, 8ph, 8pw, 6], ray_conf; and with
    a camera decoder: extrinsics (w2c) [B, S, 3, 4], intrinsics [B, S, 3, 3],
    pose_enc [B, S, 9], camera_token [B, S, 2D]; plus ref_view [B].
    Given extrinsics (w2c) and intrinsics, the camera encoder's tokens replace the
    learned camera token (and no reference view is chosen).
    """
    self.check_images(images)
    if ref_view_strategy not in REF_VIEW_STRATEGIES:
      raise ValueError(f"unknown reference view strategy {ref_view_strategy!r}; "
                       f"expected one of {REF_VIEW_STRATEGIES}")
    b, s, h, w, _ = images.shape
    cam_token = None
    if extrinsics is not None:
      if self.cam_enc is None:
        raise ValueError("this model has no camera encoder; it cannot take extrinsics")
      if intrinsics is None:
        raise ValueError("extrinsics need intrinsics as well")
      cam_token = self.cam_enc(extrinsics, intrinsics, (h, w))
    feats, cam_tokens, ref_idx = self.backbone(images, cam_token=cam_token,
                                               ref_view_strategy=ref_view_strategy)
    flat = [f.reshape((b * s,) + f.shape[2:]) for f in feats]
    out = self.head(flat, h, w)
    out = {k: v.reshape((b, s) + v.shape[1:]) for k, v in out.items()}
    out["ref_view"] = ref_idx
    out["patch_tokens"] = feats[-1]
    if self.cam_dec is not None:
      token = cam_tokens[-1].astype(jnp.float32)
      pose_enc = self.cam_dec(token)
      c2w, k = pose_encoding_to_extri_intri(pose_enc, (h, w))
      out.update(extrinsics=affine_inverse(c2w), intrinsics=k, pose_enc=pose_enc,
                 camera_token=token)
    return out


def load_params(model: DepthAnything3, params: Mapping) -> DepthAnything3:
  """Writes a nested param dict (as from the converter or Orbax) into `model`.

  List indices may come back from Orbax as strings; both forms are accepted.
  """
  def norm_keys(node):
    if isinstance(node, Mapping):
      return {(int(k) if isinstance(k, str) and k.isdigit() else k): norm_keys(v)
              for k, v in node.items()}
    return node

  state = nnx.state(model, nnx.Param)
  want = nnx.to_pure_dict(state)
  got = norm_keys(params)
  flat_want = dict(_flat(want))
  flat_got = dict(_flat(got))
  missing = sorted(str(k) for k in set(flat_want) - set(flat_got))
  extra = sorted(str(k) for k in set(flat_got) - set(flat_want))
  bad = [f"{k}: {np.shape(flat_got[k])} vs {flat_want[k].shape}" for k in flat_want
         if k in flat_got and tuple(np.shape(flat_got[k])) != tuple(flat_want[k].shape)]
  if missing or extra or bad:
    raise ValueError(f"params do not fit the model: missing {missing[:10]}, unexpected {extra[:10]}, "
                     f"shape mismatches {bad[:10]}")
  nnx.replace_by_pure_dict(state, got)
  nnx.update(model, state)
  return model


def _flat(tree, prefix=()):
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _flat(v, prefix + (k,))
  else:
    yield prefix, tree


# XLA CPU spends most of its compile time in LLVM optimisation; for one-off runs on
# CPU (fixture checks, tests) level 0 halves it at no cost in accuracy.
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def _jitted_forward(options: tuple):
  def run(graphdef, state, images, ref_view_strategy):
    return nnx.merge(graphdef, state)(images, ref_view_strategy=ref_view_strategy)
  return jax.jit(run, static_argnums=(0, 3), compiler_options=dict(options) or None)


def forward(model: DepthAnything3, images: Array, ref_view_strategy: str = "saddle_balanced",
            compiler_options: Mapping[str, Any] | None = None) -> dict[str, Array]:
  """Jitted model(images) without camera conditioning; validates shapes eagerly."""
  model.check_images(images)
  if ref_view_strategy not in REF_VIEW_STRATEGIES:
    raise ValueError(f"unknown reference view strategy {ref_view_strategy!r}; "
                     f"expected one of {REF_VIEW_STRATEGIES}")
  graphdef, state = nnx.split(model)
  fn = _jitted_forward(tuple(sorted((compiler_options or {}).items())))
  return fn(graphdef, state, images, ref_view_strategy)


def _pose_outputs(out: dict[str, Array], batched: bool) -> dict[str, Array]:
  res = {"w2c": out["extrinsics"].astype(jnp.float32), "intrinsics": out["intrinsics"],
         "depth": out["depth"], "depth_conf": out["depth_conf"], "ref_view": out["ref_view"]}
  return res if batched else {k: v[0] for k, v in res.items()}


def estimate_poses(model: DepthAnything3, frames, process_res: int | None = 504,
                   process_res_method: str = "upper_bound_resize",
                   ref_view_strategy: str = "saddle_balanced",
                   quantize: bool = True,
                   compiler_options: Mapping[str, Any] | None = None) -> dict[str, Array]:
  """Camera poses of a clip, as DA3's `inference` gives them (no input cameras).

  frames: [F, H, W, 3], or [B, F, H, W, 3] for B independent clips; uint8, or
  floating point in [0, 1]. They are resized as the reference does (longest side
  `process_res`, sides rounded to multiples of 14; process_res=None: no resize)
  and normalised. Returns w2c [(B,) F, 3, 4] float32 (each clip's reference view
  is its world frame), intrinsics [(B,) F, 3, 3] in processed-image pixels, depth
  and depth_conf [(B,) F, H', W'], ref_view [(B,)].

  Jits internally; inside a traced function use `PoseModel` (weights stay traced
  arguments instead of being baked in as constants).
  """
  if model.cam_dec is None:
    raise ValueError("this DA3 model has no camera decoder, so it cannot estimate poses")
  check_frames(frames, allow_batch=True)
  x = preprocess(frames, process_res, process_res_method, quantize)
  out = forward(model, x, ref_view_strategy, compiler_options)
  return _pose_outputs(out, len(frames.shape) == 5)


class PoseModel(nnx.Module):
  """`frames -> w2c` for the interaction reward: [F, H, W, 3] -> [F, 3, 4] float32
  (also [B, F, ...] -> [B, F, 3, 4]).

  An nnx.Module, so a reward that jits it traces the DA3 weights as arguments.
  Called on concrete arrays it runs the jitted `estimate_poses` (with
  `compiler_options`); on tracers it inlines preprocessing and the network into
  the caller's program.
  """

  def __init__(self, model: DepthAnything3, process_res: int | None = 504,
               process_res_method: str = "upper_bound_resize",
               ref_view_strategy: str = "saddle_balanced", quantize: bool = True,
               compiler_options: Mapping[str, Any] | None = None):
    if model.cam_dec is None:
      raise ValueError("this DA3 model has no camera decoder, so it cannot estimate poses")
    if ref_view_strategy not in REF_VIEW_STRATEGIES:
      raise ValueError(f"unknown reference view strategy {ref_view_strategy!r}; "
                       f"expected one of {REF_VIEW_STRATEGIES}")
    self.model = model
    self.process_res = process_res
    self.process_res_method = process_res_method
    self.ref_view_strategy = ref_view_strategy
    self.quantize = quantize
    self.compiler_options = tuple(sorted((compiler_options or {}).items()))

  def estimate(self, frames) -> dict[str, Array]:
    """All of estimate_poses' outputs."""
    if not isinstance(frames, jax.core.Tracer):
      return estimate_poses(self.model, frames, self.process_res, self.process_res_method,
                            self.ref_view_strategy, self.quantize, dict(self.compiler_options))
    check_frames(frames, allow_batch=True)
    x = preprocess(frames, self.process_res, self.process_res_method, self.quantize)
    out = self.model(x, ref_view_strategy=self.ref_view_strategy)
    return _pose_outputs(out, len(frames.shape) == 5)

  def __call__(self, frames) -> Array:
    return self.estimate(frames)["w2c"]


def make_pose_model(model: DepthAnything3, **kwargs: Any) -> PoseModel:
  """A pose_model for wc_jax.rewards (frames -> w2c); kwargs as PoseModel's."""
  return PoseModel(model, **kwargs)


def init_model(cfg: DA3Config, seed: int = 0) -> DepthAnything3:
  """A randomly initialised model (host-side numpy draws, see layers.Keys)."""
  return DepthAnything3(cfg, rngs=int(seed))


def abstract_model(cfg: DA3Config) -> DepthAnything3:
  """The model with ShapeDtypeStructs for parameters; nothing is allocated."""
  return nnx.eval_shape(lambda: DepthAnything3(cfg, rngs=jax.random.key(0)))


def from_params(cfg: DA3Config, params: Mapping) -> DepthAnything3:
  """A model holding `params` (no random initialisation)."""
  return load_params(abstract_model(cfg), params)
