"""Builds the reward stage (VAE decoder, pose network, quality scorer) from a config.

Each component is either converted weights from a local folder (real runs) or a random
model at the configured size (tiny demos, tests); nothing is downloaded.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.convert import kinds, load_model
from wc_jax.convert.quality import load_scorer, random_scorer
from wc_jax.models.da3 import config as da3_config
from wc_jax.models.da3 import model as da3_model
from wc_jax.models.quality import clip as clip_lib
from wc_jax.models import vae as vae_lib
from wc_jax.progress import phase
from wc_jax.rewards.interaction import interaction_reward
from wc_jax.rewards.quality import quality_drift_reward
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


def build_scorer(qcfg):
  if qcfg.checkpoint and qcfg.head_checkpoint:
    return load_scorer(qcfg.checkpoint, qcfg.head_checkpoint)
  if qcfg.checkpoint:   # an HF folder with the head under `aesthetic_head.`, or a wc_jax Orbax folder
    return load_model(kinds.CLIP_AESTHETIC, qcfg.checkpoint)
  vision = clip_lib.ClipVisionConfig(**qcfg.random.vision.to_dict())
  head = clip_lib.AestheticHeadConfig(dims=tuple(qcfg.random.head_dims))
  return random_scorer(vision, head, seed=qcfg.seed)


def build_reward_stage(cfg, latent_channels: int) -> RewardStage:
  rcfg = cfg.rewards
  with phase("building the VAE decoder", cfg.vae.checkpoint or "random weights"):
    decode = make_decoder(build_vae(cfg.vae, latent_channels))
  fns = {}
  weights = {}
  models = {}                       # each reward model is built once, whichever rewards use it

  def model(key, what, build, section):
    if key not in models:
      with phase(f"building the {what}", section.checkpoint or "random weights"):
        models[key] = build(section)
    return models[key]

  for name, weight in rcfg.weights.items():
    if name in ("fine_action", "action"):
      pose_model = model("pose", "pose model (Depth Anything 3)", build_pose_model, rcfg.pose)

      def action_fn(frames, first, actions, kind=name, pose_model=pose_model):
        acts = actions.astype(jnp.int32)
        return jax.vmap(lambda f: interaction_reward(f, acts, pose_model, kind=kind))(frames)
      fns[name] = action_fn
    elif name in ("drift",):
      scorer = model("quality", "quality scorer (CLIP aesthetic)", build_scorer, rcfg.quality)

      def drift_fn(frames, first, actions, scorer=scorer):
        return jax.vmap(lambda f: quality_drift_reward(f, scorer, first))(frames)
      fns[name] = drift_fn
    else:
      raise ValueError(f"reward {name!r} is not wired into the RL loop (have: fine_action, action, drift)")
    weights[name] = float(weight)
  return RewardStage(decode=decode, rewards=fns, weights=weights)
