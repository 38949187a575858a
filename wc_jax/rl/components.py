"""Builds the reward stage (VAE decoder, pose network, quality scorer) from a config.

Each component is either converted weights from a local folder (real runs) or a random
model at the configured size (tiny demos, tests); nothing is downloaded.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.rewards.interaction import interaction_reward
from wc_jax.rewards.quality import quality_drift_reward
from wc_jax.rl.trainer import RewardStage


def build_vae(vcfg, latent_channels: int):
  from wc_jax.models.vae import VAEConfig, init_model, load, unscale_latents
  if vcfg.checkpoint:
    vae = load(vcfg.checkpoint)
  else:
    vae = init_model(VAEConfig(latent_channels=latent_channels, block_out_channels=tuple(vcfg.block_out_channels),
                               layers_per_block=vcfg.layers_per_block), seed=vcfg.seed)
  if vae.config.latent_channels != latent_channels:
    raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the DiT {latent_channels}")
  return vae


def make_decoder(vae, scaled: bool = True):
  """latents [B, C, T', h, w] (DiT scale) -> frames [B, F, H, W, 3] in [0, 1]."""
  from wc_jax.models.vae import decode, unscale_latents
  graphdef, state = nnx.split(vae)

  @jax.jit
  def run(state, z):
    model = nnx.merge(graphdef, state)
    if scaled:
      z = unscale_latents(model.config, z)
    video = decode(model, z)                         # [B, 3, F, H, W] in [-1, 1]
    return jnp.clip((jnp.moveaxis(video, 1, -1) + 1.0) / 2.0, 0.0, 1.0)

  return lambda z: run(state, z)


def build_pose_model(pcfg):
  from wc_jax.models.da3 import config as da3_config
  from wc_jax.models.da3.model import init_model, make_pose_model
  if pcfg.checkpoint:
    from wc_jax.convert.common import load_orbax
    from wc_jax.models.da3.model import from_params
    params, meta = load_orbax(pcfg.checkpoint)
    model = from_params(da3_config.DA3Config.from_dict(meta["model_config"]), params)
  else:
    base = da3_config.DA3Config(**{k: (tuple(v) if isinstance(v, list) else v)
                                   for k, v in pcfg.random.to_dict().items()})
    model = init_model(base, seed=pcfg.seed)
  return make_pose_model(model, process_res=pcfg.process_res)


def build_scorer(qcfg):
  from wc_jax.models.quality import clip as clip_lib
  from wc_jax.models.quality.convert import load_scorer, random_scorer
  if qcfg.checkpoint:
    return load_scorer(qcfg.checkpoint, qcfg.head_checkpoint or None)
  vision = clip_lib.ClipVisionConfig(**qcfg.random.vision.to_dict())
  head = clip_lib.AestheticHeadConfig(dims=tuple(qcfg.random.head_dims))
  return random_scorer(vision, head, seed=qcfg.seed)


def build_reward_stage(cfg, latent_channels: int) -> RewardStage:
  rcfg = cfg.rewards
  decode = make_decoder(build_vae(cfg.vae, latent_channels))
  fns = {}
  weights = {}
  for name, weight in rcfg.weights.items():
    if name in ("fine_action", "action"):
      pose_model = build_pose_model(rcfg.pose)

      def action_fn(frames, first, actions, kind=name, pose_model=pose_model):
        acts = actions.astype(jnp.int32)
        return jax.vmap(lambda f: interaction_reward(f, acts, pose_model, kind=kind))(frames)
      fns[name] = action_fn
    elif name in ("drift",):
      scorer = build_scorer(rcfg.quality)

      def drift_fn(frames, first, actions, scorer=scorer):
        return jax.vmap(lambda f: quality_drift_reward(f, scorer, first))(frames)
      fns[name] = drift_fn
    else:
      raise ValueError(f"reward {name!r} is not wired into the RL loop (have: fine_action, action, drift)")
    weights[name] = float(weight)
  return RewardStage(decode=decode, rewards=fns, weights=weights)
