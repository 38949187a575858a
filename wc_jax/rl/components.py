"""Builds the reward stage (VAE decoder + the reward models the configured rewards need) from a config.

Each component is either converted weights from a local folder (real runs) or a random
model at the configured size (tiny demos, tests); nothing is downloaded.
"""
from __future__ import annotations

import functools
import logging

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
from wc_jax.rewards.registry import SIMILARITY_ENCODERS, SIMILARITY_OPTIONS, get_reward
from wc_jax.rewards.similarity import DA3Embedder, HPSv3Embedder, RwmlRule
from wc_jax.rewards.stage import RewardStage
from wc_jax.rl import swirl as swirl_lib
from wc_jax.rl.config import require_idm_reward


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


def build_encoder(scfg, rcfg, models):
  """The RWML embedding model (`rewards.similarity.encoder`): "quality" the CLIP quality scorer's
  vision tower, "pose" the pose model's DA3 backbone (pooled patch features), "hpsv3" HPSv3's vision
  tower (with rewards.quality.scorer='hpsv3'); each reuses the reward model built for the others."""
  kind = scfg.get("encoder", SIMILARITY_OPTIONS["encoder"])
  scorer_kind = rcfg.get("quality", {}).get("scorer", "clip")
  if kind == "quality":
    if scorer_kind == "hpsv3":
      raise ValueError("rewards.similarity.encoder='quality' embeds with the CLIP scorer's tower, but "
                       "rewards.quality.scorer='hpsv3': use encoder='hpsv3' (HPSv3's vision tower) or the CLIP scorer")
    scorer = models("scorer")
    if not hasattr(scorer, "vision"):
      raise ValueError("rewards.similarity.encoder='quality' embeds with the CLIP scorer's tower; the configured "
                       "scorer (rewards.quality.scorer) has none: use the CLIP scorer for similarity")
    return scorer.vision
  if kind == "pose":
    if rcfg.get("pose", None) is None:
      raise ValueError("rewards.similarity.encoder='pose' embeds with the pose model's DA3 backbone, but "
                       "rewards.pose is missing: configure the pose model (see configs/tiny.py)")
    return DA3Embedder(models("pose"))
  if kind == "hpsv3":
    if scorer_kind != "hpsv3":
      raise ValueError(f"rewards.similarity.encoder='hpsv3' embeds with HPSv3's vision tower, but "
                       f"rewards.quality.scorer={scorer_kind!r}: set rewards.quality.scorer='hpsv3' (and a "
                       "rewards.hpsv3 section) or choose encoder 'quality' or 'pose'")
    return HPSv3Embedder(models("scorer"))
  raise ValueError(f"rewards.similarity.encoder must be one of {SIMILARITY_ENCODERS} (the CLIP scorer's tower, "
                   f"the pose model's DA3 backbone, HPSv3's vision tower), got {kind!r}")


def similarity_rule(name: str, score, model, options) -> RwmlRule | None:
  """RWML's group rules for the embedding_similarity reward `name` when `rewards.similarity` asks for
  binarisation or the easy filter (None: the dense reward alone)."""
  o = {**SIMILARITY_OPTIONS, **(options.to_dict() if hasattr(options, "to_dict") else dict(options))}
  if not (o["binarize"] or o["filter_easy"]):
    return None
  easy = float(o["easy_threshold"])
  return RwmlRule(reward=name, similarity=functools.partial(_score_one, score, model, {**o, "binarize": False}),
                  threshold=float(o["threshold"]), binarize=bool(o["binarize"]), filter_easy=bool(o["filter_easy"]),
                  easy_threshold=None if easy == -1.0 else easy)


# reward model role -> (config section under `rewards`, what it is, builder(section, models))
MODEL_BUILDERS = {   # builder(section, rewards section, models)
    "pose": ("pose", "pose model (Depth Anything 3)", lambda sec, rcfg, models: build_pose_model(sec)),
    "scorer": ("quality", "quality scorer", lambda sec, rcfg, models: build_quality_scorer(sec, rcfg)),
    "encoder": ("similarity", "embedding model", lambda sec, rcfg, models: build_encoder(sec, rcfg, models)),
    "idm": ("idm", "inverse-dynamics model", lambda sec, rcfg, models: build_idm(sec)),
}


def build_reward_stage(cfg, latent_channels: int, mesh=None):
  """The configured rewards (`rewards.weights`: registry name -> weight), each reward model
  built once whichever rewards use it; options come from the reward's own section. RWML's group
  rules when `rewards.similarity` asks for them (`similarity_rule`); with `swirl.enabled` the stage
  is wrapped in SWIRL's alternation (wc_jax.rl.swirl.SwirlRewardStage), which trains the idm
  reward's IDM in place on the policy's generations."""
  rcfg = cfg.rewards
  if swirl_lib.from_config(cfg.get("swirl", None)).enabled:
    require_idm_reward(rcfg.weights.keys())          # before any model is built
  with phase("building the VAE decoder", cfg.vae.checkpoint or "random weights"):
    vae = build_vae(cfg.vae, latent_channels)
    decode = make_decoder(vae)
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

  fns, weights, reads_real, rule = {}, {}, False, None
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
    if spec.name == "embedding_similarity":
      rule = similarity_rule(spec.name, spec.score, model, options)
  window = cfg.rl.get("reward_window", "wc_jax") if "rl" in cfg else "wc_jax"
  stage = RewardStage(decode=decode, rewards=fns, weights=weights, mesh=mesh, window=window, reads_real=reads_real,
                      rwml_rule=rule, frames_per_latent=int(vae.config.ffactor_temporal))
  return swirl_lib.wrap_reward_stage(stage, built.get("idm"), cfg, log=logging.getLogger("wc_jax.train").info)


def _score_one(score, model, options, frames, window):
  return score(model, frames, window, options)
