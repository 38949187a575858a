"""Builds the reward stage (VAE decoder + the reward models the configured rewards need) from a config.

Each component is either converted weights from a local folder (real runs) or a random
model at the configured size (tiny demos, tests); nothing is downloaded.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.convert import idm as convert_idm
from wc_jax.convert import kinds, load_model
from wc_jax.convert.quality import load_scorer, random_scorer
from wc_jax.models.da3 import config as da3_config
from wc_jax.models.da3 import model as da3_model
from wc_jax.models.quality import clip as clip_lib
from wc_jax.models import vae as vae_lib
from wc_jax.models.idm import IDMConfig
from wc_jax.progress import phase
from wc_jax.rewards.registry import get_reward
from wc_jax.rewards.stage import RewardStage


def build_vae(vcfg, latent_channels: int):
  if vcfg.checkpoint:
    vae = load_model(kinds.VAE, vcfg.checkpoint)
  else:
    vae = vae_lib.init_model(vae_lib.VAEConfig(latent_channels=latent_channels,
                                               block_out_channels=tuple(vcfg.block_out_channels),
                                               layers_per_block=vcfg.layers_per_block), seed=vcfg.seed)
  if vae.config.latent_channels != latent_channels:
    raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the DiT {latent_channels}")
  return vae


def make_decoder(vae, scaled: bool = True):
  """latents [B, C, T', h, w] (DiT scale) -> frames [B, F, H, W, 3] in [0, 1]."""
  graphdef, state = nnx.split(vae)

  @jax.jit
  def run(state, z):
    model = nnx.merge(graphdef, state)
    if scaled:
      z = vae_lib.unscale_latents(model.config, z)
    video = vae_lib.decode(model, z)                         # [B, 3, F, H, W] in [-1, 1]
    return jnp.clip((jnp.moveaxis(video, 1, -1) + 1.0) / 2.0, 0.0, 1.0)

  return lambda z: run(state, z)


def build_pose_model(pcfg):
  if pcfg.checkpoint:
    model = load_model(kinds.DA3, pcfg.checkpoint)
  else:
    base = da3_config.DA3Config(**{k: (tuple(v) if isinstance(v, list) else v)
                                   for k, v in pcfg.random.to_dict().items()})
    model = da3_model.init_model(base, seed=pcfg.seed)
  return da3_model.make_pose_model(model, process_res=pcfg.process_res)


SCORERS = ("clip", "hpsv3")


def build_quality_scorer(qcfg, rcfg):
  """`rewards.quality.scorer`: "hpsv3" (the paper's HPSv3, options in `rewards.hpsv3`) or "clip"
  (the light CLIP aesthetic option, this section)."""
  kind = qcfg.get("scorer", "clip")
  if kind == "hpsv3":
    from wc_jax.rewards.hpsv3 import build_scorer as build_hpsv3
    section = rcfg.get("hpsv3", None)
    if section is None:
      raise ValueError("rewards.quality.scorer='hpsv3' needs a `rewards.hpsv3` section (checkpoint, tokenizer, "
                       "dtype, ...; see configs/hunyuan8b.py)")
    return build_hpsv3(section)
  if kind != "clip":
    raise ValueError(f"rewards.quality.scorer must be one of {SCORERS}, got {kind!r}")
  return build_scorer(qcfg)


def build_scorer(qcfg):
  if qcfg.checkpoint and qcfg.head_checkpoint:
    return load_scorer(qcfg.checkpoint, qcfg.head_checkpoint)
  if qcfg.checkpoint:   # an HF folder with the head under `aesthetic_head.`, or a wc_jax Orbax folder
    return load_model(kinds.CLIP_AESTHETIC, qcfg.checkpoint)
  vision = clip_lib.ClipVisionConfig(**qcfg.random.vision.to_dict())
  head = clip_lib.AestheticHeadConfig(dims=tuple(qcfg.random.head_dims))
  return random_scorer(vision, head, seed=qcfg.seed)


def build_idm(icfg):
  if icfg.checkpoint:
    return load_model(kinds.IDM, icfg.checkpoint)
  return convert_idm.random_idm(IDMConfig(in_channels=3, frames_per_step=4, widths=tuple(icfg.widths),
                                          hidden=int(icfg.hidden)), seed=int(icfg.seed))


def build_encoder(scfg, models):
  """The RWML embedding model: `quality` reuses the quality scorer's CLIP tower."""
  if scfg.encoder == "quality":
    scorer = models("scorer")
    if not hasattr(scorer, "vision"):
      raise ValueError("rewards.similarity.encoder='quality' embeds with the CLIP scorer's tower; the configured "
                       "scorer (rewards.quality.scorer) has none: use the CLIP scorer for similarity")
    return scorer.vision
  raise ValueError(f"rewards.similarity.encoder must be 'quality' (the quality scorer's CLIP tower), "
                   f"got {scfg.encoder!r}")


# reward model role -> (config section under `rewards`, what it is, builder(section, models))
MODEL_BUILDERS = {   # builder(section, rewards section, models)
    "pose": ("pose", "pose model (Depth Anything 3)", lambda sec, rcfg, models: build_pose_model(sec)),
    "scorer": ("quality", "quality scorer", lambda sec, rcfg, models: build_quality_scorer(sec, rcfg)),
    "encoder": ("similarity", "embedding model", lambda sec, rcfg, models: build_encoder(sec, models)),
    "idm": ("idm", "inverse-dynamics model", lambda sec, rcfg, models: build_idm(sec)),
}


def build_reward_stage(cfg, latent_channels: int, mesh=None) -> RewardStage:
  """The configured rewards (`rewards.weights`: registry name -> weight), each reward model
  built once whichever rewards use it; options come from the reward's own section."""
  rcfg = cfg.rewards
  with phase("building the VAE decoder", cfg.vae.checkpoint or "random weights"):
    decode = make_decoder(build_vae(cfg.vae, latent_channels))
  built = {}

  def models(role):
    if role not in built:
      section_name, what, build = MODEL_BUILDERS[role]
      section = rcfg.get(section_name, None)
      if section is None:
        raise ValueError(f"rewards.{section_name} is missing: the {what} needs it")
      source = section.get("checkpoint", "")
      if role == "scorer" and section.get("scorer", "clip") == "hpsv3":
        what, source = "quality scorer (HPSv3)", rcfg.get("hpsv3", {}).get("checkpoint", "")
      with phase(f"building the {what}", source or "random weights"):
        built[role] = build(section, rcfg, models)
    return built[role]

  fns, weights, reads_real = {}, {}, False
  for name, weight in rcfg.weights.items():
    try:
      spec = get_reward(name)
    except KeyError as e:
      raise ValueError(str(e.args[0])) from None
    if spec.score is None or spec.model not in MODEL_BUILDERS:
      raise ValueError(f"reward {name!r} cannot be used in the RL loop yet (it needs a model the trainer "
                       f"does not build: {spec.model!r})")
    model = models(spec.model)
    options = rcfg.get(MODEL_BUILDERS[spec.model][0], {})
    fns[spec.name] = functools.partial(_score_one, spec.score, model, options)
    weights[spec.name] = float(weight)
    reads_real = reads_real or spec.reads_real
  window = cfg.rl.get("reward_window", "wc_jax") if "rl" in cfg else "wc_jax"
  return RewardStage(decode=decode, rewards=fns, weights=weights, mesh=mesh, window=window, reads_real=reads_real)


def _score_one(score, model, options, frames, window):
  return score(model, frames, window, options)
