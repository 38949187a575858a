"""The composition root of an RL run: config -> mesh, the DiT (weights or abstract shapes),
the rollout engine and the update program with their shardings, the reward stage and the
data. `python -m wc_jax.train` runs what `build` returns; `python -m wc_jax.plan
--path=rollout|update` lowers the very same programs on abstract inputs (`lowerable`), as
MaxText's train_compile.py does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax import sharding
from wc_jax.convert import kinds, load_model
from wc_jax.models.worldplay.config import DiTConfig, from_config
from wc_jax.models.worldplay.model import TextCache, VisionCache, WorldPlayDiT, functional, randomize
from wc_jax.progress import phase, size_note
from wc_jax.rl import programs
from wc_jax.rl.rollout import ClipRolloutEngine
from wc_jax.rl.update import UpdateBatch, init_state


@dataclasses.dataclass
class RLRun:
  cfg: Any
  mcfg: DiTConfig
  mesh: Any
  apply: Any                          # functional DiT: apply(params, method, *args)
  params: Any                         # nnx.State of arrays, or of ShapeDtypeStructs when abstract
  update: programs.UpdateProgram      # jitted update + optimizer + shardings
  engine: ClipRolloutEngine           # the rollout's chunk engine (its own compiled programs)


def build_dit(cfg, mcfg: DiTConfig, *, abstract: bool = False) -> nnx.Module:
  """The configured DiT: shapes only (`abstract`), loaded from `model.checkpoint`, or built
  at random (`model.init`)."""
  if abstract:
    return nnx.eval_shape(lambda: WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  shapes = nnx.eval_shape(lambda: WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(shapes)))
  size = size_note(n_params, np.dtype(mcfg.param_dtype).itemsize, jax.default_backend())
  if cfg.model.checkpoint:                 # the run's model config wins; shapes are checked
    with phase("loading the WorldPlay DiT", f"{size}, from {cfg.model.checkpoint}"):
      return load_model(kinds.DIT, cfg.model.checkpoint, **mcfg.to_dict())
  with phase("building the WorldPlay DiT", size):
    model = WorldPlayDiT(mcfg, rngs=nnx.Rngs(cfg.seed))
    if cfg.model.get("init", "reference") == "random":
      randomize(model, cfg.seed)
  return model


# A DiT of this many parameters is a real model: random weights for it (or for the models that
# score it) are a forgotten path, not a smoke test.
FULL_SIZE_PARAMS = 1_000_000_000


def dit_params(mcfg: DiTConfig) -> int:
  shapes = nnx.eval_shape(lambda: WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(shapes)))


def missing_checkpoints(cfg) -> list[str]:
  """Every model of the run that would start from random weights, as 'key (what)' lines."""
  from wc_jax.rewards.registry import get_reward
  from wc_jax.rl.config import REWARD_SECTIONS
  out = []
  if not cfg.model.get("checkpoint", ""):
    out.append("model.checkpoint (the WorldPlay DiT: python -m wc_jax.convert --from-torch ... --kind=dit)")
  if "vae" in cfg and not cfg.vae.get("checkpoint", ""):
    out.append("vae.checkpoint (the HunyuanVideo-1.5 VAE: python -m wc_jax.convert ... --kind=vae)")
  rewards = cfg.get("rewards", None)
  seen = set()
  for name in (rewards.weights.keys() if rewards is not None else ()):
    try:
      role = get_reward(name).model
    except KeyError:
      continue
    section = REWARD_SECTIONS.get(role)
    if section is None or section in seen or section == "similarity":   # the encoder reuses the scorer
      continue
    seen.add(section)
    if section == "quality" and section in rewards and rewards.quality.get("scorer", "clip") == "hpsv3":
      section = "hpsv3"
    has = section in rewards and rewards[section].get("checkpoint", "")
    if not has:
      out.append(f"rewards.{section}.checkpoint (the model of reward {name!r})")
  data = cfg.get("data", None)
  source = "synthetic_latents" if data is None else data.get("source", "synthetic_latents")
  if source in ("synthetic_latents", "synthetic_world"):
    out.append(f"data.source (is {source!r}, synthetic conditioning: use 'records' from write_records)")
  return out


def check_random_init(cfg, mcfg: DiTConfig) -> None:
  """Refuses a full-size run that would train or score with random models, naming every missing
  checkpoint, unless `allow_random_init=True` is set on purpose."""
  if cfg.get("allow_random_init", False):
    return
  n = dit_params(mcfg)
  if n < FULL_SIZE_PARAMS:
    return
  missing = missing_checkpoints(cfg)
  if missing:
    from wc_jax.rl.config import ConfigError
    raise ConfigError("allow_random_init", False,
                      f"a {n / 1e9:.1f}B-parameter DiT would run with random parts: set "
                      + "; ".join(missing) + " (or --config.allow_random_init=True to run them at random on purpose)")


def build(cfg, mesh=None, *, abstract: bool = False) -> RLRun:
  """Everything of an RL run that depends only on the config and the mesh."""
  mcfg = from_config(cfg.model)
  if not abstract:
    check_random_init(cfg, mcfg)
  mesh = mesh or sharding.make_mesh(dict(cfg.mesh))
  apply, params = functional(build_dit(cfg, mcfg, abstract=abstract))
  return RLRun(cfg=cfg, mcfg=mcfg, mesh=mesh, apply=apply, params=params,
               update=programs.update_program(cfg, apply, params, mesh),
               engine=programs.rollout_engine(cfg, apply))


def reward_stage(cfg, mcfg: DiTConfig, mesh=None):
  from wc_jax.rl.components import build_reward_stage
  return build_reward_stage(cfg, mcfg.latent_channels, mesh=mesh)


def data(cfg, mcfg: DiTConfig):
  from wc_jax.rl.data_source import make_data
  return make_data(cfg, mcfg)


# ----------------------------------------------------------------------------- plan

def _one_clip_inputs(run: RLRun):
  """Abstract batch-1 inputs of one clip at the config's real token counts."""
  cfg, mcfg = run.cfg, run.mcfg
  s, t = cfg.sampling, cfg.text
  sds = jax.ShapeDtypeStruct
  h, w = s.latent_height // mcfg.patch_size[1], s.latent_width // mcfg.patch_size[2]
  dt = mcfg.compute_dtype
  lt = t.text_tokens + t.byt5_tokens + t.vision_tokens
  L, hd, heads, chunk = mcfg.depth, mcfg.head_dim, mcfg.heads, mcfg.chunk_latents
  n = s.max_context_frames * h * w
  return dict(
      action=sds((1, chunk), jnp.float32), viewmats=sds((1, chunk, 4, 4), jnp.float32),
      Ks=sds((1, chunk, 3, 3), jnp.float32),
      text_cache=TextCache(sds((L, 1, lt, heads, hd), dt), sds((L, 1, lt, heads, hd), dt), sds((1, lt), bool)),
      ctx=VisionCache(sds((L, 2, 1, n, heads, hd), dt), sds((L, 2, 1, n, heads, hd), dt), sds((1, n), bool),
                      sds((1,), jnp.int32)))


def lowerable(run: RLRun, path: str):
  """(jitted fn, abstract sharded args, DiT chunk passes) of the RL rollout's denoiser or the
  update step: the objects `train` calls, ready for `fn.lower(*args)`."""
  cfg, mcfg, mesh = run.cfg, run.mcfg, run.mesh
  rl, s = cfg.rl, cfg.sampling
  sds = jax.ShapeDtypeStruct
  one = _one_clip_inputs(run)
  c, chunk = mcfg.latent_channels, mcfg.chunk_latents
  lat = (c, chunk, s.latent_height, s.latent_width)
  rep = NamedSharding(mesh, P())
  tc, vc = one["text_cache"], one["ctx"]
  text_shard = TextCache(programs.kv_sharding(tc.k, mesh, name="text cache K"),
                         programs.kv_sharding(tc.v, mesh, name="text cache V"), rep)
  ctx_shard = VisionCache(programs.kv_sharding(vc.k, mesh, vision=True, name="context cache K"),
                          programs.kv_sharding(vc.v, mesh, vision=True, name="context cache V"), rep, rep)
  if path == "rollout":
    g = rl.group_size
    args = (run.params, sds((g,) + lat, jnp.float32), sds((1, c + 1) + lat[1:], jnp.float32), one["action"],
            one["viewmats"], one["Ks"], tc, vc, sds((rl.rollout_steps + 1,), jnp.float32))
    cand = sharding.activation_sharding(mesh, ("activation_batch",), (g,), "rollout candidates")
    shard = (run.update.param_shardings, cand, rep, rep, rep, rep, text_shard, ctx_shard, rep)
    return run.engine.denoise_program, programs.abstract(args, shard), g * rl.rollout_steps
  if path != "update":
    raise ValueError(f"lowerable: path must be 'rollout' or 'update', got {path!r}")
  train_state = jax.eval_shape(lambda p: init_state(p, run.update.tx, 0), run.params)
  k, n_traj = rl.best_of_n, int(rl.get("trajectories_per_step", 1))
  per_traj = lambda x: sds((n_traj,) + tuple(x.shape), x.dtype)
  batch = UpdateBatch(sds((n_traj, k) + lat, jnp.float32), sds((n_traj, k), jnp.float32),
                      sds((n_traj, 1, c + 1) + lat[1:], jnp.float32),
                      *jax.tree.map(per_traj, (one["action"], one["viewmats"], one["Ks"], tc, vc)),
                      sds((), jnp.int32))
  args = (programs.abstract(train_state, run.update.state_shardings),
          programs.abstract(batch, programs.batch_shardings(batch, mesh)))
  n_sig = max(1, int(rl.rollout_steps * rl.sigma_fraction))
  # per sigma: v_old forward + v_theta forward/backward (3x) + remat recompute (1x), K samples
  return run.update.fn, args, n_traj * n_sig * k * (1 + 3 + (1 if mcfg.remat_policy != "none" else 0))
