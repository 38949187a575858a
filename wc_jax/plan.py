"""Will it fit? AOT-compiles the DiT forward+backward for a TPU topology on this CPU.

    python -m wc_jax.plan --config=configs/hunyuan8b.py --topology=v5p:2x2x4
    python -m wc_jax.plan --config=configs/hunyuan8b.py --topology=v5p:2x2x2 --path=full --config.mesh.context=2

Needs libtpu (`pip install -e .[tpu]`); no TPU is used: jax.experimental.topologies describes
the chips, XLA compiles for them, and the compiled program reports its per-chip memory and
FLOPs. Paths:
  ar      - one DiT pass of the RL update: a 4-latent target chunk attending to [text; 20 context
            latents] (cache given), forward + backward w.r.t. all parameters;
  full    - base training: chunk-causal forward over context+target latents, forward + backward;
  rollout - the RL rollout: G candidates x the Euler steps against one context cache (inference);
  update  - the whole RL update step: train state (fp32 params, Muon/AdamW moments, policy EMA,
            checkpoint EMA), v_old + NFT loss forward/backward over the sampled sigmas, optimizer.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wc_jax import cli, sharding
from wc_jax.rl import config as run_config
from wc_jax.progress import phase
from wc_jax.models.worldplay import flops as flops_lib
from wc_jax.models.worldplay.model import TextCache, TextTokens, VisionCache, WorldPlayDiT, functional
from wc_jax.rl import programs
from wc_jax.rl.update import UpdateBatch, init_state

_CONFIG = cli.config_flag("configs/hunyuan8b.py")
_TOPOLOGY = cli.string_flag("topology", "v5p:2x2x4", "TPU topology name, e.g. v5p:2x2x2, v5e:4x4, v6e:2x4")
_PATH = cli.string_flag("path", "ar", "what to plan: ar | full | rollout | update")
_BATCH = cli.string_flag("batch", "0", "global batch (default: one row per data-parallel group)")
_JSON = cli.string_flag("json", "", "also write the figures to this JSON file")

HBM_GIB = {"v5p": 95.74, "v5e": 16.0, "v5litepod": 16.0, "v6e": 31.25, "v4": 32.0}
PEAK_TFLOPS = {"v5p": 459.0, "v5e": 197.0, "v5litepod": 197.0, "v6e": 918.0, "v4": 275.0}


def topology_mesh(topology: str, mesh_cfg: dict) -> Mesh:
  import os
  # AOT only: several processes (tests, a training run) may load libtpu side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from wc_jax.distributed import local_tpu_chips
  if local_tpu_chips() == 0:
    # no TPU here: libtpu would ask the GCE metadata server for the slice and print an
    # alarming 'unexpected worker hostname' block. AOT needs neither (the topology is named).
    for var, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       ("TPU_ACCELERATOR_TYPE", "v5p-8")):
      os.environ.setdefault(var, value)
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  return sharding.make_mesh(mesh_cfg, devices=topo.devices)


def _model_config(cfg):
  from wc_jax.models.worldplay.config import from_config
  return from_config(cfg.model)


def abstract_inputs(mcfg, cfg, path: str, batch: int):
  """ShapeDtypeStructs of one pass's inputs at the config's real token counts."""
  s, t = cfg.sampling, cfg.text
  h, w = s.latent_height // mcfg.patch_size[1], s.latent_width // mcfg.patch_size[2]
  f32, dt = jnp.float32, mcfg.compute_dtype
  lt = t.text_tokens + t.byt5_tokens + t.vision_tokens
  sds = jax.ShapeDtypeStruct
  chunk, ctx = mcfg.chunk_latents, s.max_context_frames
  if path == "full":
    frames = ctx + chunk
    text = TextTokens(sds((batch, lt, mcfg.hidden_size), dt), sds((batch, lt), bool), sds((batch, mcfg.hidden_size), dt))
    return dict(hs=sds((batch, mcfg.in_channels, frames, s.latent_height, s.latent_width), f32),
                t=sds((batch, frames), f32), action=sds((batch, frames), f32),
                viewmats=sds((batch, frames, 4, 4), f32), Ks=sds((batch, frames, 3, 3), f32), text=text)
  L, hd, heads = mcfg.depth, mcfg.head_dim, mcfg.heads
  tc = TextCache(sds((L, batch, lt, heads, hd), dt), sds((L, batch, lt, heads, hd), dt), sds((batch, lt), bool))
  n = ctx * h * w
  vc = VisionCache(sds((L, 2, batch, n, heads, hd), dt), sds((L, 2, batch, n, heads, hd), dt),
                   sds((batch, n), bool), sds((batch,), jnp.int32))
  return dict(hs=sds((batch, mcfg.in_channels, chunk, s.latent_height, s.latent_width), f32),
              t=sds((batch, chunk), f32), action=sds((batch, chunk), f32),
              viewmats=sds((batch, chunk, 4, 4), f32), Ks=sds((batch, chunk, 3, 3), f32), text_cache=tc,
              ctx=vc)


def input_shardings(inputs, mesh):
  def spec(x):
    nd = len(x.shape)
    if nd == 0:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, sharding.fit_spec(sharding.logical_to_spec(("activation_batch",) + (None,) * (nd - 1),
                                                                        mesh=mesh), x.shape, mesh))
  out = jax.tree.map(spec, inputs)
  # caches carry the layer axis first: batch is axis 1 (text) / 2 (vision), tokens over `context`
  if "text_cache" in inputs:
    tc, vc = inputs["text_cache"], inputs["ctx"]
    out["text_cache"] = TextCache(programs.kv_sharding(tc.k, mesh), programs.kv_sharding(tc.v, mesh),
                                  out["text_cache"].mask)
    out["ctx"] = VisionCache(programs.kv_sharding(vc.k, mesh, vision=True), programs.kv_sharding(vc.v, mesh, vision=True),
                             out["ctx"].valid, out["ctx"].frames)
  return out


def make_step(apply, path: str, causal: bool = True):
  """loss = mean(v^2) of the pass; returns (loss, grads) - a forward+backward over all params."""
  def loss_fn(params, rest, inputs):
    state = nnx.merge_state(params, rest) if rest is not None else params
    if path == "full":
      v = apply(state, "forward", inputs["hs"], inputs["t"], inputs["text"], action=inputs["action"],
                viewmats=inputs["viewmats"], Ks=inputs["Ks"], causal=causal)
    else:
      v = apply(state, "denoise_chunk", inputs["hs"], inputs["t"], inputs["action"], inputs["viewmats"],
                inputs["Ks"], inputs["text_cache"], inputs["ctx"])
    return jnp.mean(jnp.square(v.astype(jnp.float32)))

  def step(params, inputs):
    return jax.value_and_grad(loss_fn)(params, None, inputs)
  return step


def _rl_program(cfg, mcfg, path, mesh, apply, state, param_shard):
  """(jitted fn, abstract args, forward FLOPs) of the rollout or the update step."""
  rl, s = cfg.rl, cfg.sampling
  sds = jax.ShapeDtypeStruct
  one = abstract_inputs(mcfg, cfg, "ar", 1)
  c, chunk = mcfg.latent_channels, mcfg.chunk_latents
  lat = (c, chunk, s.latent_height, s.latent_width)
  rep = NamedSharding(mesh, P())
  cache_shard = input_shardings(one, mesh)
  if path == "rollout":
    g = rl.group_size
    args = (state, sds((g,) + lat, jnp.float32), sds((1, c + 1) + lat[1:], jnp.float32), one["action"],
            one["viewmats"], one["Ks"], one["text_cache"], one["ctx"], sds((rl.rollout_steps + 1,), jnp.float32))
    cand = NamedSharding(mesh, sharding.fit_spec(sharding.logical_to_spec(("activation_batch",), mesh=mesh), (g,), mesh))
    shard = (param_shard, cand, rep, rep, rep, rep, cache_shard["text_cache"], cache_shard["ctx"], rep)
    # the RL rollout's own compiled denoiser, with the trainer's settings
    return programs.rollout_engine(cfg, apply).denoise_program, programs.abstract(args, shard), g * rl.rollout_steps
  # the trainer's own update program and shardings (wc_jax.rl.programs), lowered on abstract inputs
  program = programs.update_program(cfg, apply, state, mesh)
  train_state = jax.eval_shape(lambda p: init_state(p, program.tx, 0), state)
  k = rl.best_of_n
  batch = UpdateBatch(sds((k,) + lat, jnp.float32), sds((k,), jnp.float32), sds((1, c + 1) + lat[1:], jnp.float32),
                      one["action"], one["viewmats"], one["Ks"], one["text_cache"], one["ctx"])
  args = (programs.abstract(train_state, program.state_shardings),
          programs.abstract(batch, programs.batch_shardings(batch, mesh)))
  fn = program.fn
  n_sig = max(1, int(rl.rollout_steps * rl.sigma_fraction))
  # per sigma: v_old forward + v_theta forward/backward (3x) + remat recompute (1x), K samples
  return fn, args, n_sig * k * (1 + 3 + (1 if mcfg.remat_policy != "none" else 0))


PATHS = ("ar", "full", "rollout", "update")


def plan(cfg, topology: str, path: str = "ar", batch: int = 0) -> dict:
  if path not in PATHS:
    raise run_config.ConfigError("--path", path, f"must be one of {PATHS}")
  run_config.validate(cfg, required=run_config.PLAN_SECTIONS + (("rl", "optim") if path in ("rollout", "update")
                                                                  else ()))
  mcfg = _model_config(cfg)
  with phase("describing the topology", topology):
    try:
      mesh = topology_mesh(topology, dict(cfg.mesh))
    except RuntimeError as e:   # XlaRuntimeError: unknown topology name
      raise run_config.ConfigError("--topology", topology, str(e).splitlines()[0]) from None
  if path in ("rollout", "update"):
    return _plan_rl(cfg, mcfg, topology, path, mesh)
  batch = batch or mesh.shape["data"] * mesh.shape["fsdp"]
  abstract = nnx.eval_shape(lambda: WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  apply, state = functional(abstract)
  param_shard = sharding.state_shardings(state, mesh)
  inputs = abstract_inputs(mcfg, cfg, path, batch)
  in_shard = input_shardings(inputs, mesh)
  step = make_step(apply, path)
  with sharding.use_mesh(mesh):
    jitted = jax.jit(step, in_shardings=(param_shard, in_shard),
                     out_shardings=(NamedSharding(mesh, P()), param_shard))
    compiled = _compile(jitted, (state, inputs), topology, f"{path} pass")
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  gib = 2 ** 30
  chip = topology.split(":")[0]
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  flops = float(cost.get("flops", 0.0)) if cost else 0.0  # XLA: scan body once, custom calls 0
  s = cfg.sampling
  tokens_per_frame = (s.latent_height // mcfg.patch_size[1]) * (s.latent_width // mcfg.patch_size[2])
  lt = cfg.text.text_tokens + cfg.text.byt5_tokens + cfg.text.vision_tokens
  if path == "ar":
    fwd = flops_lib.ar_chunk_flops(mcfg, tokens_per_frame, mcfg.chunk_latents, s.max_context_frames, lt, batch)
  else:
    fwd = flops_lib.full_flops(mcfg, tokens_per_frame, s.max_context_frames + mcfg.chunk_latents, lt, True, batch)
  chips = int(np.prod(list(mesh.shape.values())))
  step_flops = fwd * (3 + (1 if mcfg.remat_policy != "none" else 0)) / chips   # fwd + bwd (+ remat recompute)
  return {
      "topology": topology, "chips": int(np.prod(list(mesh.shape.values()))), "mesh": dict(mesh.shape),
      "path": path, "batch": batch, "params_billion": round(n_params / 1e9, 3),
      "tokens_per_latent_frame": tokens_per_frame, "attention_impl": mcfg.attention_impl,
      "remat_policy": mcfg.remat_policy, "compute_dtype": mcfg.dtype, "param_dtype": mcfg.param_dtype,
      "per_chip_gib": {"arguments": round(mem.argument_size_in_bytes / gib, 2),
                       "outputs": round(mem.output_size_in_bytes / gib, 2),
                       "temporaries": round(mem.temp_size_in_bytes / gib, 2),
                       "total": round(per_chip / gib, 2)},
      "hbm_per_chip_gib": HBM_GIB.get(chip), "fits": (per_chip / gib) <= HBM_GIB.get(chip, float("inf")),
      "model_tflop_per_chip": round(step_flops / 1e12, 4),
      "xla_counted_tflop_per_chip": round(flops / 1e12, 4),
      "ideal_step_seconds_at_peak": round(step_flops / (PEAK_TFLOPS.get(chip, 1) * 1e12), 4),
  }


def _compile(fn, args, topology: str, what: str):
  """Lower and XLA-compile with progress lines (the 8B programs take minutes; Ctrl-C stops)."""
  with phase(f"lowering the {what}"):
    lowered = fn.lower(*args)
  with phase(f"compiling the {what} for {topology}", "XLA, minutes for the 8B model"):
    return lowered.compile()


def _plan_rl(cfg, mcfg, topology, path, mesh) -> dict:
  abstract = nnx.eval_shape(lambda: WorldPlayDiT(mcfg, rngs=nnx.Rngs(0)))
  apply, state = functional(abstract)
  param_shard = sharding.state_shardings(state, mesh)
  fn, args, passes = _rl_program(cfg, mcfg, path, mesh, apply, state, param_shard)
  with sharding.use_mesh(mesh):
    compiled = _compile(fn, args, topology, f"RL {path}")
  mem = compiled.memory_analysis()
  gib = 2 ** 30
  chip = topology.split(":")[0]
  chips = int(np.prod(list(mesh.shape.values())))
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  s = cfg.sampling
  tpf = (s.latent_height // mcfg.patch_size[1]) * (s.latent_width // mcfg.patch_size[2])
  lt = cfg.text.text_tokens + cfg.text.byt5_tokens + cfg.text.vision_tokens
  fwd = flops_lib.ar_chunk_flops(mcfg, tpf, mcfg.chunk_latents, s.max_context_frames, lt)
  step_flops = fwd * passes / chips
  return {
      "topology": topology, "chips": chips, "mesh": dict(mesh.shape), "path": path,
      "group_size": cfg.rl.group_size, "kept": cfg.rl.best_of_n, "rollout_steps": cfg.rl.rollout_steps,
      "attention_impl": mcfg.attention_impl, "remat_policy": mcfg.remat_policy, "compute_dtype": mcfg.dtype,
      "param_dtype": mcfg.param_dtype,
      "per_chip_gib": {"arguments": round(mem.argument_size_in_bytes / gib, 2),
                       "outputs": round(mem.output_size_in_bytes / gib, 2),
                       "aliased": round(mem.alias_size_in_bytes / gib, 2),
                       "temporaries": round(mem.temp_size_in_bytes / gib, 2), "total": round(per_chip / gib, 2)},
      "argument_bytes_per_chip": int(mem.argument_size_in_bytes),
      "hbm_per_chip_gib": HBM_GIB.get(chip), "fits": (per_chip / gib) <= HBM_GIB.get(chip, float("inf")),
      "model_tflop_per_chip": round(step_flops / 1e12, 3),
      "ideal_seconds_at_peak": round(step_flops / (PEAK_TFLOPS.get(chip, 1) * 1e12), 3),
  }


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  out = plan(_CONFIG(), _TOPOLOGY(), _PATH(), int(_BATCH()))
  print(json.dumps(out, indent=2))
  if _JSON():
    with open(_JSON(), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)
  return 0


if __name__ == "__main__":
  cli.run(main)
