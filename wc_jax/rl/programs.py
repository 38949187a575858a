"""The compiled update of an RL step, built once from a config: what `train` runs is what
`plan` compiles (as MaxText's train_compile.py: the plan is the program that runs).

    prog = update_program(cfg, apply, params, mesh)         # params: arrays or ShapeDtypeStructs
    state = jax.device_put(init_state(params, prog.tx, seed), prog.state_shardings)
    state, metrics = prog.fn(state, place_batch(batch, mesh))   # train
    prog.fn.lower(abstract_state(prog, params), abstract_batch).compile()   # plan
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax import sharding
from wc_jax.models.worldplay.model import TextCache, VisionCache
from wc_jax.rewards.nft import nft_sigma_schedule
from wc_jax.rl.optim import make_optimizer
from wc_jax.rl.rollout import ClipRolloutEngine
from wc_jax.rl.update import UpdateBatch, UpdateSemantics, init_state, make_update_fn, state_shardings


def optimizer(cfg, params_like) -> optax.GradientTransformation:
  """The `optim` section as an optax transformation (one object per setting: see make_optimizer);
  Muon treats the parameters stacked over "layers" per layer (from their metadata)."""
  o = cfg.optim
  return make_optimizer(lr=float(o.lr), weight_decay=float(o.weight_decay), grad_clip=float(o.grad_clip),
                        grad_accum=int(o.grad_accum), use_muon=bool(o.muon), muon_rms=float(o.muon_rms),
                        b1=float(o.b1), b2=float(o.b2), stacked=sharding.stacked_layer_paths(params_like))


def semantics(cfg) -> UpdateSemantics:
  """The `rl` section's update semantics (absent keys: wc_jax's defaults)."""
  rl, d = cfg.rl, UpdateSemantics()
  return UpdateSemantics(samples_per_optimizer_step=int(rl.get("samples_per_optimizer_step",
                                                               d.samples_per_optimizer_step)),
                         per_sample_sigmas=bool(rl.get("per_sample_sigmas", d.per_sample_sigmas)),
                         sigma_reduction=str(rl.get("sigma_reduction", d.sigma_reduction)),
                         int_timesteps=bool(rl.get("int_timesteps", d.int_timesteps)),
                         ema_clock=str(rl.get("ema_clock", d.ema_clock)))


def _hyper(cfg) -> tuple:
  rl = cfg.rl
  return (int(rl.rollout_steps), float(rl.shift), float(rl.sigma_fraction), float(rl.beta), float(rl.adv_clip),
          bool(rl.released_v_old), tuple(float(x) for x in rl.policy_ema), float(rl.ckpt_ema_decay), semantics(cfg))


@dataclasses.dataclass(frozen=True)
class UpdateProgram:
  tx: optax.GradientTransformation
  param_shardings: Any        # tree like the parameters
  state_shardings: Any        # TrainState of shardings (optimizer moments and EMAs like their parameters)
  fn: Any                     # jitted update(state, batch) -> (state, metrics); state donated


_CACHE: dict = {}


def update_program(cfg, apply, params_like, mesh) -> UpdateProgram:
  """The update step with its shardings. One compiled object per (model, optimizer,
  hyper-parameters, mesh, parameter shapes): trainers of the same config share it."""
  tx = optimizer(cfg, params_like)
  param_shardings = sharding.state_shardings(params_like, mesh)
  state_like = jax.eval_shape(lambda p: init_state(p, tx, 0), params_like)
  st_shard = state_shardings(state_like, mesh)
  key = (apply, tx, _hyper(cfg), mesh, jax.tree.structure(params_like),
         tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(params_like)))
  fn = _CACHE.get(key)
  if fn is None:
    steps, shift, frac, beta, adv_clip, released, policy_ema, ckpt_ema, sem = _hyper(cfg)
    update = make_update_fn(apply, tx, sigma_schedule=nft_sigma_schedule(steps, shift), sigma_fraction=frac,
                            beta=beta, adv_clip=adv_clip, released_v_old=released, policy_ema=policy_ema,
                            ckpt_ema_decay=ckpt_ema, semantics=sem)
    fn = _CACHE[key] = jax.jit(update, out_shardings=(st_shard, NamedSharding(mesh, P())), donate_argnums=(0,))
  return UpdateProgram(tx, param_shardings, st_shard, fn)


def kv_sharding(x, mesh, vision: bool = False, leading: int = 0, name: str = "K/V cache") -> NamedSharding:
  """A cache's K or V: (`leading` unsplit axes, e.g. the update's trajectory axis,) layer axis,
  then (vision: the RoPE/PRoPE branch,) batch over the data axes (a batch-1 cache, shared by
  the candidates, is whole by rule), tokens whole (`activation_kv_length`: every query shard
  attends to all of them), heads over `tensor`."""
  logical = ("layers",) + ((None,) if vision else ()) + ("activation_batch", "activation_kv_length",
                                                         "activation_heads", None)
  spec = sharding.activation_sharding(mesh, logical, x.shape[leading:], name).spec
  return NamedSharding(mesh, P(*((None,) * leading), *spec))


def rollout_engine(cfg, apply) -> ClipRolloutEngine:
  """The RL rollout's chunk engine (its Euler steps and shift come from `rl`, the rest from the
  config's model and sampling sections): what the trainer runs and `plan --path=rollout` lowers."""
  return ClipRolloutEngine.from_config(apply, cfg, steps=int(cfg.rl.rollout_steps), shift=float(cfg.rl.shift))


def batch_shardings(batch: UpdateBatch, mesh) -> UpdateBatch:
  """Where the update's inputs live: the kept samples of each trajectory over the data axes,
  the caches (leading trajectory axis, then batch 1) with their heads split as the model's
  rules say, everything else (small) replicated."""
  rep = NamedSharding(mesh, P())
  tc, vc = batch.text_cache, batch.ctx
  text = TextCache(kv_sharding(tc.k, mesh, leading=1, name="text cache K"),
                   kv_sharding(tc.v, mesh, leading=1, name="text cache V"), jax.tree.map(lambda _: rep, tc.mask))
  ctx = None if vc is None else VisionCache(kv_sharding(vc.k, mesh, vision=True, leading=1, name="context cache K"),
                                            kv_sharding(vc.v, mesh, vision=True, leading=1, name="context cache V"),
                                            jax.tree.map(lambda _: rep, vc.valid), jax.tree.map(lambda _: rep, vc.frames))
  x0 = sharding.activation_sharding(mesh, (None, "activation_batch"), batch.x0.shape[:2], "kept samples x0").spec
  x0 = NamedSharding(mesh, P(*x0))
  return UpdateBatch(x0, rep, rep, rep, rep, rep, text, ctx, rep)


def place_batch(batch: UpdateBatch, mesh) -> UpdateBatch:
  return jax.device_put(batch, batch_shardings(batch, mesh))


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (for lowering without allocating)."""
  leaves, treedef = jax.tree.flatten(tree)
  where = jax.tree.leaves(shardings)   # a NamedSharding per array (nnx Variables flatten to their value)
  if len(where) != len(leaves):
    raise ValueError(f"{len(where)} shardings for {len(leaves)} arrays")
  return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, where)])
