"""Checks a run config (configs/*.py) before anything is built.

A bad value must fail in seconds with one line that names the key, the value and what is
allowed, not minutes later as a traceback from deep inside a model. `validate(cfg)` checks
every section it knows that the config has; `check_workdir` checks the output folder
without creating anything.

    from wc_jax.rl import config as run_config
    run_config.validate(cfg, required=run_config.TRAIN_SECTIONS)   # raises ConfigError
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, Callable

from wc_jax.models.worldplay.config import REMAT_POLICIES, DiTConfig
from wc_jax.nn.attention import IMPLS as ATTENTION_IMPLS
from wc_jax.rewards.advantages import STD_TYPE_NAMES
from wc_jax.rewards.registry import ALIASES, REWARDS, SIMILARITY_ENCODERS
from wc_jax.rewards.similarity import POOLINGS
from wc_jax.rl.curriculum import KINDS as CURRICULA

TRAIN_SECTIONS = ("model", "sampling", "text", "mesh", "rl", "optim", "vae", "rewards", "checkpoint")
GENERATE_SECTIONS = ("model", "sampling", "text", "mesh")
PLAN_SECTIONS = ("model", "sampling", "text", "mesh")
# rewards the RL trainer's reward stage can build (wc_jax.rl.components.build_reward_stage): every
# registry reward that says which reward model it needs; its options live in that model's section
TRAINER_REWARDS = tuple(name for name, spec in REWARDS.items() if spec.score is not None)
REWARD_SECTIONS = {"pose": "pose", "scorer": "quality", "encoder": "similarity", "idm": "idm"}
DATA_SOURCES = ("synthetic_latents", "records", "synthetic_world")
FIRST_LATENTS = ("pooled", "vae")
DTYPES = ("float32", "bfloat16", "float16")
SWIRL_OBJECTIVES = ("grpo", "supervised")     # wc_jax.rl.swirl.OBJECTIVES


class ConfigError(ValueError):
  """A config value that cannot run; `key` is its dotted name."""

  def __init__(self, key: str, value: Any, allowed: str):
    self.key, self.value, self.allowed = key, value, allowed
    super().__init__(f"{'' if key.startswith('--') else 'config '}{key} = {value!r}: {allowed}")


# ----------------------------------------------------------------------------- field rules

@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config value may be: `check(value)` returns None or what is allowed."""
  check: Callable[[Any], str | None]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None, *, also: tuple = (), why: str = "") -> Rule:
  span = ("an integer" + (f" >= {lo}" if lo is not None else "") + (f" and <= {hi}" if hi is not None else "")
          + (f" (or {', '.join(map(str, also))})" if also else "") + (f" ({why})" if why else ""))

  def check(v):
    if v in also and _is_int(v):
      return None
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
      return f"must be {span}"
    return None
  return Rule(check)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           why: str = "") -> Rule:
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo:g}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi:g}")
  span = "a finite number" + (" " + " and ".join(parts) if parts else "") + (f" ({why})" if why else "")

  def check(v):
    if not _is_num(v):
      return f"must be {span}"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {span}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {span}"
    return None
  return Rule(check)


def boolean() -> Rule:
  return Rule(lambda v: None if isinstance(v, bool) else "must be True or False")


def choice(options, why: str = "") -> Rule:
  options = tuple(options)
  return Rule(lambda v: None if v in options else f"must be one of {options}" + (f" ({why})" if why else ""))


def text() -> Rule:
  return Rule(lambda v: None if isinstance(v, str) else "must be a string")


def existing_path(what: str) -> Rule:
  """'' (not used) or a path that exists; gs:// and other remote paths are checked when read."""
  def check(v):
    if not isinstance(v, str):
      return f"must be a string path to {what} (or '' for none)"
    if not v or "://" in v or os.path.exists(v):
      return None
    return f"no such file or folder ({what}; '' for none)"
  return Rule(check)


def int_tuple(length: int | None = None, lo: int = 1) -> Rule:
  def check(v):
    ok = isinstance(v, (tuple, list)) and all(_is_int(x) and x >= lo for x in v) and len(v) > 0
    if ok and (length is None or len(v) == length):
      return None
    return f"must be a tuple of {length or 'one or more'} integers >= {lo}"
  return Rule(check)


def unit_tuple(length: int) -> Rule:
  def check(v):
    if isinstance(v, (tuple, list)) and len(v) == length and all(_is_num(x) and 0 <= x <= 1 for x in v):
      return None
    return f"must be a tuple of {length} numbers in [0, 1]"
  return Rule(check)


def anything() -> Rule:
  return Rule(lambda v: None)


# ----------------------------------------------------------------------------- sections

_MODEL_EXTRA = {"checkpoint": existing_path("a wc_jax Orbax DiT checkpoint"),
                "init": choice(("reference", "random"))}

SECTIONS: dict[str, dict[str, Rule]] = {
    "sampling": dict(
        steps=integer(1), shift=number(0, lo_open=True), max_context_frames=integer(1),
        recent_context_frames=integer(0), chunks=integer(1),
        latent_height=integer(1), latent_width=integer(1)),
    "text": dict(text_tokens=integer(1), byt5_tokens=integer(1), vision_tokens=integer(1)),
    "mesh": dict(data=integer(1, also=(-1,)), fsdp=integer(1, also=(-1,)), context=integer(1, also=(-1,)),
                 tensor=integer(1, also=(-1,))),
    "rl": dict(
        total_steps=integer(1), trajectories_per_step=integer(1),
        group_size=integer(2, why="advantages need two or more candidates per group"),
        best_of_n=integer(2, why="kept N/2 best + N/2 worst"), curriculum=choice(CURRICULA), max_clip=integer(1),
        fixed_clip=integer(1), rollout_steps=integer(1), shift=number(0, lo_open=True),
        sigma_fraction=number(0, 1, lo_open=True), beta=number(0, lo_open=True), adv_clip=number(0, lo_open=True),
        released_v_old=boolean(), std_type=choice(STD_TYPE_NAMES), policy_ema=unit_tuple(3),
        samples_per_optimizer_step=integer(0, why="0 = every kept sample in one optimizer step"),
        per_sample_sigmas=boolean(), sigma_reduction=choice(("mean", "sum")), int_timesteps=boolean(),
        ema_clock=choice(("optimizer", "rl")), reward_window=choice(("wc_jax", "released")),
        ckpt_ema_decay=number(0, 1)),
    "optim": dict(
        lr=number(0, lo_open=True), weight_decay=number(0), grad_clip=number(0, lo_open=True),
        grad_accum=integer(1), muon=boolean(), muon_rms=number(0, lo_open=True), b1=number(0, 1, hi_open=True),
        b2=number(0, 1, hi_open=True)),
    "vae": dict(checkpoint=existing_path("a converted VAE"), seed=integer(0), block_out_channels=int_tuple(),
                layers_per_block=integer(1)),
    "data": dict(
        source=choice(DATA_SOURCES), path=text(), split=text(), seed=integer(0), shuffle=boolean(),
        num_epochs=integer(0, why="0 repeats forever"), worker_count=integer(0), read_threads=integer(0),
        first_latent=choice(FIRST_LATENTS), synthetic=anything()),
    "checkpoint": dict(every=integer(1), keep=integer(1), async_save=boolean()),
    "evaluation": dict(every=integer(0, why="0 = never"), trajectories=integer(1), latents=integer(1),
                       steps=integer(1), seed=integer(0), source=choice(("synthetic", "records")), split=text()),
    "logging": dict(video_every=integer(0, why="0 = never"), progress=boolean(), nan_as_null=boolean(),
                    profile_steps=int_tuple(2, lo=0), flush_secs=number(0)),
    # SWIRL's alternation (wc_jax.rl.swirl.SwirlConfig): IDM phases on the policy's generations
    "swirl": dict(enabled=boolean(), every=integer(1), steps=integer(1), objective=choice(SWIRL_OBJECTIVES),
                  lr=number(0, lo_open=True), batch_size=integer(1),
                  samples=integer(2, why="GRPO needs two or more sampled actions per step"), seed=integer(0)),
}

# `rewards.similarity` (registry.SIMILARITY_OPTIONS): the embedding_similarity (RWML) reward's options
SIMILARITY_RULES = dict(
    encoder=choice(SIMILARITY_ENCODERS), pooling=choice(POOLINGS), binarize=boolean(),
    threshold=number(-1, 1, why="a cosine similarity"), filter_easy=boolean(),
    easy_threshold=number(-1, 1, why="a cosine similarity; -1 = the threshold"))


def _check_section(cfg, name: str) -> None:
  check_rules(cfg[name], name, SECTIONS[name])


def check_rules(section, name: str, rules: dict, owner: str = "") -> None:
  """Every key of `section` is one of `rules` and passes its rule (ConfigError naming the key);
  `owner` says whose setting it is in the message (e.g. " for LingBot-World")."""
  for key in section.keys():
    if key not in rules:
      raise ConfigError(f"{name}.{key}", section[key], f"is not a setting of `{name}`{owner}; the settings are "
                        f"{sorted(rules)}")
  for key, rule in rules.items():
    if key in section:
      problem = rule.check(section[key])
      if problem:
        raise ConfigError(f"{name}.{key}", section[key], problem)


def _check_model(cfg) -> None:
  m = cfg.model.to_dict()
  for key, rule in _MODEL_EXTRA.items():
    if key in m:
      problem = rule.check(m.pop(key))
      if problem:
        raise ConfigError(f"model.{key}", cfg.model[key], problem)
  for key in ("dtype", "param_dtype"):
    if key in m and m[key] not in DTYPES:
      raise ConfigError(f"model.{key}", m[key], f"must be one of {DTYPES}")
  if "attention_impl" in m and m["attention_impl"] not in ATTENTION_IMPLS:
    raise ConfigError("model.attention_impl", m["attention_impl"], f"must be one of {ATTENTION_IMPLS}")
  if "remat_policy" in m and m["remat_policy"] not in REMAT_POLICIES:
    raise ConfigError("model.remat_policy", m["remat_policy"], f"must be one of {REMAT_POLICIES}")
  for key, value in m.items():
    if isinstance(value, int) and not isinstance(value, bool) and value < (0 if key == "refiner_depth" else 1):
      raise ConfigError(f"model.{key}", value, "must be an integer >= 1")
  try:
    DiTConfig.from_dict(m)
  except (TypeError, ValueError) as e:
    raise ConfigError("model", "...", str(e).splitlines()[0]) from None


def _check_cross(cfg) -> None:
  """Values that are fine alone but not together."""
  if "rl" in cfg:
    rl = cfg.rl
    if rl.best_of_n > rl.group_size:
      raise ConfigError("rl.best_of_n", rl.best_of_n, f"must be <= rl.group_size ({rl.group_size})")
    spo = rl.get("samples_per_optimizer_step", 0)
    if spo and rl.best_of_n % spo:
      raise ConfigError("rl.samples_per_optimizer_step", spo, f"must divide rl.best_of_n ({rl.best_of_n}): the "
                        "kept samples of a trajectory are split into optimizer steps of this many")
    if rl.curriculum == "fixed" and rl.fixed_clip > rl.max_clip:
      raise ConfigError("rl.fixed_clip", rl.fixed_clip, f"must be <= rl.max_clip ({rl.max_clip})")
  if "sampling" in cfg:
    s = cfg.sampling
    if "model" in cfg and "patch_size" in cfg.model:
      p = tuple(cfg.model.patch_size)
      for key, axis in (("latent_height", 1), ("latent_width", 2)):
        if s[key] % p[axis]:
          raise ConfigError(f"sampling.{key}", s[key], f"must be a multiple of model.patch_size[{axis}] ({p[axis]})")
  if "mesh" in cfg:
    auto = [k for k, v in cfg.mesh.items() if v == -1]
    if len(auto) > 1:
      raise ConfigError("mesh", dict(cfg.mesh), f"at most one axis may be -1 (fill the rest), got {auto}")
  if "data" in cfg and cfg.data.get("source") == "records" and not cfg.data.get("path"):
    raise ConfigError("data.path", cfg.data.get("path"), "data.source='records' needs the TFDS folder "
                      "(python -m wc_jax.data.write_records)")
  if "data" in cfg and cfg.data.get("source") == "records" and cfg.data.get("path"):
    problem = existing_path("a TFDS record folder").check(cfg.data.path)
    if problem:
      raise ConfigError("data.path", cfg.data.path, problem)
  if "rewards" in cfg:
    weights = cfg.rewards.get("weights", None)
    if weights is None or not len(weights):
      raise ConfigError("rewards.weights", None, "name at least one reward and its weight")
    for name, w in weights.items():
      if not _is_num(w):
        raise ConfigError(f"rewards.weights.{name}", w, "must be a finite number")
    if cfg.rewards.get("similarity", None) is not None:
      check_rules(cfg.rewards.similarity, "rewards.similarity", SIMILARITY_RULES)
    if "swirl" in cfg and cfg.swirl.get("enabled", False):
      require_idm_reward(weights.keys())


def require_idm_reward(names) -> None:
  """SWIRL alternates the IDM of the `idm` reward: with swirl enabled, `names` (reward weights'
  keys, aliases allowed) must include it. One check for config validation, the trainer's reward
  stage (before any model is built) and the SWIRL wrapper."""
  names = list(names)
  if "idm" not in {ALIASES.get(n, n) for n in names}:
    raise ConfigError("swirl.enabled", True, "alternates the IDM of the 'idm' reward, but rewards.weights has no "
                      f"idm (has {sorted(names)}): add e.g. rewards.weights.idm=2.0")


def validate(cfg, required: tuple[str, ...] = (), rewards: tuple[str, ...] | None = None) -> None:
  """Raises ConfigError on the first bad value. `required`: sections this entry point needs;
  `rewards`: the reward names it can build (None: not checked)."""
  if "seed" in cfg:
    problem = integer(0).check(cfg.seed)
    if problem:
      raise ConfigError("seed", cfg.seed, problem)
  for name in required:
    if name not in cfg:
      raise ConfigError(name, None, f"this entry point needs a `{name}` section (see configs/tiny.py)")
  if "model" in cfg:
    _check_model(cfg)
  for name in SECTIONS:
    if name in cfg:
      _check_section(cfg, name)
  if "distributed" in cfg:
    from wc_jax import distributed
    try:
      distributed.validate(cfg.distributed)
    except ValueError as e:
      raise ConfigError("distributed", "...", str(e)) from None
  _check_cross(cfg)
  if rewards is not None and "rewards" in cfg:
    for given in cfg.rewards.weights.keys():
      name = ALIASES.get(given, given)      # the reference's names (rwml, swirl, ...) too
      if name not in rewards:
        raise ConfigError(f"rewards.weights.{given}", cfg.rewards.weights[given],
                          f"is not a reward this entry point can build; choose from {rewards}")
      section = REWARD_SECTIONS.get(REWARDS[name].model)
      if section is not None and section not in cfg.rewards:
        raise ConfigError(f"rewards.{section}", None, f"reward {given!r} needs its model's section "
                          f"`rewards.{section}` (see configs/tiny.py)")
      if name == "embedding_similarity":
        _check_similarity_encoder(cfg.rewards)


def _check_similarity_encoder(rcfg) -> None:
  """The embedding model `rewards.similarity.encoder` names is one the config builds."""
  encoder = rcfg.similarity.get("encoder", "quality")
  scorer = rcfg.get("quality", {}).get("scorer", "clip")
  if encoder == "quality" and "quality" not in rcfg:
    raise ConfigError("rewards.quality", None, "rewards.similarity.encoder='quality' embeds with the "
                      "quality scorer's CLIP tower: configure `rewards.quality`")
  if encoder == "quality" and scorer == "hpsv3":
    raise ConfigError("rewards.similarity.encoder", encoder, "embeds with the CLIP scorer's tower, but "
                      "rewards.quality.scorer='hpsv3': use encoder='hpsv3' (HPSv3's vision tower) or the CLIP scorer")
  if encoder == "pose" and "pose" not in rcfg:
    raise ConfigError("rewards.pose", None, "rewards.similarity.encoder='pose' embeds with the pose model's "
                      "DA3 backbone: configure `rewards.pose`")
  if encoder == "hpsv3" and scorer != "hpsv3":
    raise ConfigError("rewards.similarity.encoder", encoder, f"embeds with HPSv3's vision tower, but "
                      f"rewards.quality.scorer={scorer!r}: set rewards.quality.scorer='hpsv3' (and a rewards.hpsv3 "
                      "section) or choose encoder 'quality' or 'pose'")


# ----------------------------------------------------------------------------- workdir

def check_workdir(workdir: str) -> None:
  """Raises ConfigError if `workdir` cannot be created or written; creates nothing."""
  if "://" in workdir:          # remote (gs://...): checked by the first write
    return
  p = pathlib.Path(workdir).absolute()
  if p.exists() and not p.is_dir():
    raise ConfigError("--workdir", workdir, "exists and is not a folder")
  probe = p
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir():
    raise ConfigError("--workdir", workdir, f"cannot be created: {probe} is a file, not a folder")
  if not os.access(probe, os.W_OK | os.X_OK):
    where = "is not writable" if probe == p else f"cannot be created: {probe} is not writable"
    raise ConfigError("--workdir", workdir, where)
