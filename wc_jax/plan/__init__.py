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

Besides memory, each path reports the compiled per-chip FLOPs (counted from the partitioned HLO,
loops times their trip counts, splash kernels from their shapes) beside the analytic FLOPs / chips,
term by term (`analytic_terms`: dense and attention forwards, remat recompute, backwards with the
splash kernels' 3.5x, the optimizer's Newton-Schulz matmuls): their ratio `replication` is 1.0
when the chips split the work, N when all N chips do all of it; a roofline lower bound for the
step; and the K/V caches' per-chip shapes (docs/performance.md).
"""
from __future__ import annotations

import json
import re

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
from wc_jax.rl import optim, programs, root

_CONFIG = cli.config_flag("configs/hunyuan8b.py")
_TOPOLOGY = cli.string_flag("topology", "v5p:2x2x4", "TPU topology name, e.g. v5p:2x2x2, v5e:4x4, v6e:2x4")
_PATH = cli.string_flag("path", "ar", "what to plan: ar | full | rollout | update | rewards (the reward stage) | "
                        "denoise (LingBot-World; with a lingbot config also update)")
_BATCH = cli.string_flag("batch", "0", "global batch (default: one row per data-parallel group)")
_JSON = cli.string_flag("json", "", "also write the figures to this JSON file")
_STRICT = cli.flag("bool", "strict", False, "an activation the mesh cannot split is an error, not a logged "
                   "replication")

HBM_GIB = {"v5p": 95.74, "v5e": 16.0, "v5litepod": 16.0, "v6e": 31.25, "v4": 32.0}
PEAK_TFLOPS = {"v5p": 459.0, "v5e": 197.0, "v5litepod": 197.0, "v6e": 918.0, "v4": 275.0}   # bf16, per chip
# HBM bandwidth per chip, GB/s (Cloud TPU system-architecture pages: v5p 2765, v5e 819, v6e 1640, v4 1200)
HBM_GBPS = {"v5p": 2765.0, "v5e": 819.0, "v5litepod": 819.0, "v6e": 1640.0, "v4": 1200.0}


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
    return sharding.activation_sharding(mesh, ("activation_batch",) + (None,) * (nd - 1), x.shape, "input")
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


PATHS = ("ar", "full", "rollout", "update")
STAGE_PATHS = ("rewards", "denoise")   # wc_jax/plan/stages.py: the reward stage; LingBot-World (denoise, update)


def plan(cfg, topology: str, path: str = "ar", batch: int = 0, strict: bool = False) -> dict:
  """Compiles `path` for `topology` and reports memory, work and placement. Activations the mesh
  cannot split as the rules say are listed in `replicated_activations` (each also logged), or,
  with `strict`, an error naming the first (`sharding.UnsplittableAxisError`)."""
  with sharding.record_replication() as replicated, sharding.strict_activations(strict):
    out = _plan(cfg, topology, path, batch)
  out["replicated_activations"] = list(replicated)
  return out


def _plan(cfg, topology: str, path: str = "ar", batch: int = 0) -> dict:
  if path in STAGE_PATHS or cfg.get("family", "worldplay") == "lingbot":
    from wc_jax.plan import stages as plan_stages
    return plan_stages.plan(cfg, topology, path)
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
  frames = s.max_context_frames + mcfg.chunk_latents
  if path == "ar":
    fwd = flops_lib.ar_chunk_flops(mcfg, tokens_per_frame, mcfg.chunk_latents, s.max_context_frames, lt, batch)
  else:
    fwd = flops_lib.full_flops(mcfg, tokens_per_frame, frames, lt, True, batch)
  attention = batch * _attention_fwd_flops(mcfg, tokens_per_frame, frames, s.max_context_frames, lt, path)
  terms = analytic_terms(mcfg, fwd, attention, forwards=0, trained=1)
  chips = int(np.prod(list(mesh.shape.values())))
  step_flops = sum(terms.values()) / chips   # fwd + bwd (+ remat recompute)
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
      **_report(compiled, chip, chips, terms, _remat_note(mcfg, "train"), _cache_specs(inputs, in_shard)),
  }


# The splash kernels' backward recomputes the scores: its dq kernel runs QK^T, dO V^T and dS K (3 of
# the forward's 2 matmuls), its dkv kernel QK^T, dO V^T, P^T dO and dS^T Q (4): 3.5 forward
# equivalents, where a backward that kept the probabilities would run 2. The XLA kernels do the 2.
ATTENTION_BACKWARD = {"splash": 3.5}


def _attention_fwd_flops(mcfg, tokens_per_frame: int, frames: int, context_frames: int, text_tokens: int,
                         path: str) -> float:
  """The attention (QK^T + PV) share of one forward in wc_jax.models.worldplay.flops' terms."""
  c, per_chunk = mcfg.hidden_size, tokens_per_frame * mcfg.chunk_latents
  if path == "full":   # chunk-causal over `frames` latents, text keys: the same pairs as full_flops
    chunks = -(-frames // mcfg.chunk_latents)
    visible = sum(per_chunk * (text_tokens + (i + 1) * per_chunk) for i in range(chunks))
    return float(mcfg.depth * 4 * c * (2 * visible + text_tokens * text_tokens))
  keys = text_tokens + context_frames * tokens_per_frame + per_chunk
  return float(mcfg.depth * 2 * 4 * per_chunk * keys * c)   # RoPE and PRoPE branches


def analytic_terms(mcfg, fwd: float, attention: float, forwards: float, trained: float,
                   optimizer: dict | None = None, optimizer_steps: int = 0) -> dict:
  """The work the program is meant to do, whole step over all chips, term by term (FLOPs):
  `forwards` passes without a backward (rollout steps, v_old), `trained` passes with fwd +
  (remat recompute) + backward; dense matmuls backward 2x their forward, attention backward as
  the kernel computes it (ATTENTION_BACKWARD); the optimizer's Newton-Schulz matmuls per step.
  `optimizer_elementwise` is listed but left out of the sum (the compiled count is matmuls and
  attention kernels only)."""
  dense = fwd - attention
  remat = 1.0 if mcfg.remat_policy != "none" else 0.0
  bwd = ATTENTION_BACKWARD.get(mcfg.attention_impl, 2.0)
  terms = {"dense_forward": dense * (forwards + trained), "dense_remat": dense * remat * trained,
           "dense_backward": 2.0 * dense * trained,
           "attention_forward": attention * (forwards + trained), "attention_remat": attention * remat * trained,
           "attention_backward": bwd * attention * trained}
  if optimizer is not None:
    terms["optimizer_newton_schulz"] = optimizer["newton_schulz"] * optimizer_steps
  return terms


def _compile(fn, args, topology: str, what: str):
  """Lower and XLA-compile with progress lines (the 8B programs take minutes; Ctrl-C stops)."""
  with phase(f"lowering the {what}"):
    lowered = fn.lower(*args)
  with phase(f"compiling the {what} for {topology}", "XLA, minutes for the 8B model"):
    return lowered.compile()


def _plan_rl(cfg, mcfg, topology, path, mesh) -> dict:
  # the trainer's composition root, on abstract weights: the programs `train` runs
  run = root.build(cfg, mesh, abstract=True)
  fn, args, _ = root.lowerable(run, path)
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
  attention = _attention_fwd_flops(mcfg, tpf, mcfg.chunk_latents, s.max_context_frames, lt, "ar")
  rl = cfg.rl
  if path == "rollout":
    terms = analytic_terms(mcfg, fwd, attention, forwards=rl.group_size * rl.rollout_steps, trained=0)
    extra = None
  else:   # per trajectory, sampled sigma and kept sample: v_old forward (not when released overwrites it)
    o = cfg.optim
    k, n_sig = rl.best_of_n, max(1, int(rl.rollout_steps * rl.sigma_fraction))
    trained = int(rl.get("trajectories_per_step", 1)) * n_sig * k
    per_step = int(rl.get("samples_per_optimizer_step", 0)) or k
    opt = optim.optimizer_flops(run.params, sharding.stacked_layer_paths(run.params), use_muon=bool(o.muon))
    terms = analytic_terms(mcfg, fwd, attention, forwards=0 if rl.released_v_old else trained, trained=trained,
                           optimizer=opt, optimizer_steps=k // per_step)
    extra = {"optimizer_elementwise": opt["elementwise"] * (k // per_step)}
  step_flops = sum(terms.values()) / chips
  return {
      "topology": topology, "chips": chips, "mesh": dict(mesh.shape), "path": path,
      "group_size": cfg.rl.group_size, "kept": cfg.rl.best_of_n, "rollout_steps": cfg.rl.rollout_steps,
      **({"trajectories": int(cfg.rl.get("trajectories_per_step", 1))} if path == "update" else {}),
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
      **_report(compiled, chip, chips, terms, _remat_note(mcfg, "rollout" if path == "rollout" else "update"),
                _cache_specs(args), extra=extra),
  }


def _remat_note(mcfg, kind: str) -> str:
  """What the analytic count (the denominator of `replication`) includes besides the model's forwards."""
  if kind == "rollout":
    return "inference: forwards only, no remat"
  extra = " + 1 remat recompute (remat_policy=%s)" % mcfg.remat_policy if mcfg.remat_policy != "none" else ""
  bwd = ATTENTION_BACKWARD.get(mcfg.attention_impl, 2.0)
  per = f"fwd 1 + bwd 2 (attention bwd {bwd}: {mcfg.attention_impl})" + extra
  return (f"per trained pass {per}; per sigma also 1 v_old forward; the optimizer's Newton-Schulz matmuls"
          if kind == "update" else f"per step {per}")

# ----------------------------------------------------------------------------- compiled-program accounting
# XLA's cost_analysis() counts a while-loop body once (the scanned layers, the Euler steps, the sigma
# loop) and a custom kernel (splash attention) as zero, so the replication check re-counts the
# compiled per-chip HLO itself: matmul FLOPs (dot / convolution) and bytes of every top-level op,
# each multiplied by the trip counts of the loops around it.

_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "opt-barrier", "copy-done", "all-gather-done",
               "all-reduce-done", "collective-permute-done", "async-done", "send-done", "recv-done"}


def _arrays(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _ARRAY.findall(type_str)]


def _nbytes(type_str: str) -> int:
  return sum(_DTYPE_BYTES[d] * int(np.prod(s)) for d, s in _arrays(type_str))


def _conv_macs_per_output(lhs: tuple[int, ...], kernel: tuple[int, ...], attrs: str) -> float:
  """Input features x window taps that reach one output. XLA writes batched dots as convolutions
  whose batch dims become windows over lhs-dilated or zero-padded inputs: per spatial dim only
  min(ceil(window / lhs dilation), input size) taps can touch real input."""
  m = re.search(r"dim_labels=([^_]*)_([^-]*)->", attrs)
  lhs_l, labels = (m.group(1), m.group(2)) if m else ("", "")
  if len(labels) != len(kernel):
    return float(np.prod(kernel))
  macs = float(kernel[labels.index("i")]) if "i" in labels else 1.0
  w = re.search(r"window=\{([^}]*)\}", attrs)
  dil = re.search(r"lhs_dilate=([\dx]+)", w.group(1)) if w else None
  spatial = sorted((ch, kernel[i]) for i, ch in enumerate(labels) if ch.isdigit())
  dil = [int(x) for x in dil.group(1).split("x")] if dil else [1] * len(spatial)
  for (ch, size), d in zip(spatial, dil):
    taps = -(-size // d)
    if len(lhs_l) == len(lhs) and ch in lhs_l:
      taps = min(taps, lhs[lhs_l.index(ch)])
    macs *= taps
  return macs


def _split_call(rest: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs')."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def _parse_hlo(text: str) -> tuple[dict, str]:
  comps, entry, cur = {}, "", None
  for line in text.splitlines():
    if cur is None:
      m = _HEADER.match(line)
      if m and line.rstrip().endswith("{"):
        cur = comps.setdefault(m.group(1), [])
        entry = m.group(1) if line.startswith("ENTRY") else entry
      continue
    if line.rstrip() == "}":   # (a custom call's backend_config spans lines, some opening with '}}')
      cur = None
      continue
    m = _INSTR.match(line)
    if m:
      name, typ, op, rest = m.groups()
      operands, attrs = _split_call(rest)
      cur.append((name, typ, op, re.findall(r"%([\w.\-]+)", operands), attrs))
  return comps, entry


def hlo_costs(text: str) -> dict:
  """Per-chip matmul FLOPs, estimated attention-kernel FLOPs and op bytes of a compiled HLO module,
  loops counted as many times as they run (trip count from the loop condition's `i < N`)."""
  comps, entry = _parse_hlo(text)
  consts = {}
  for line in text.splitlines():
    m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = [su](?:32|64)\[\]\S* constant\((-?\d+)\)", line)
    if m:
      consts[m.group(1)] = int(m.group(2))
  shapes = {n: t for instrs in comps.values() for n, t, *_ in instrs}
  unknown_loops = []
  memo = {}
  # visit() sums [matmul, attention fwd, attention dq, attention dkv, bytes]

  def step(cond, body, ops) -> int:
    """The induction variable's increment: 1, or k where XLA unrolled the loop k times (the
    windowed collective matmuls of a `tensor` split count `i += 2` up to N)."""
    idx = next((re.search(r"index=(\d+)", a) for n, t, op, oo, a in cond
                if op == "get-tuple-element" and n in ops), None)
    root = next((i for i in comps.get(body, ()) if i[2] == "tuple"), None) if idx else None
    if root is None or int(idx.group(1)) >= len(root[3]):
      return 1
    out = root[3][int(idx.group(1))]
    for n, t, op, oo, a in comps.get(body, ()):
      if n == out and op == "add":
        inc = [consts[o] for o in oo if o in consts]
        return max(1, inc[0]) if len(inc) == 1 else 1
    return 1

  def trip(cond_name, attrs, body=""):
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
    if m:
      return int(m.group(1))
    cond = comps.get(cond_name, ())
    for n, t, op, ops, a in cond:   # `i < N` (on CPU the compare sits in a wrapped fusion)
      if op == "compare" and "direction=LT" in a or op == "fusion" and "compare" in n:
        hits = [consts[o] for o in ops if o in consts]
        if len(hits) == 1:
          return -(-hits[0] // step(cond, body, ops))
    scalars = [consts[n] for n, *_ in cond if n in consts]
    if len(scalars) == 1:
      return scalars[0]
    unknown_loops.append(cond_name)
    return 1

  def visit(cname, fused):
    key = (cname, fused)
    if key in memo:
      return memo[key]
    acc = np.zeros(5)
    for name, typ, op, ops, attrs in comps.get(cname, ()):
      called = dict(re.findall(r"\b(calls|to_apply|body|condition)=%([\w.\-]+)", attrs))
      if op in ("dot", "convolution"):
        out = int(np.prod(_arrays(typ)[0][1]))
        lhs = _arrays(shapes.get(ops[0], ""))
        rhs = _arrays(shapes.get(ops[1], "")) if len(ops) > 1 else []
        if op == "dot" and lhs:
          m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
          k = int(np.prod([lhs[0][1][int(i)] for i in m.group(1).split(",") if i])) if m else 1
          acc[0] += 2.0 * out * k
        elif rhs:
          acc[0] += 2.0 * out * _conv_macs_per_output(lhs[0][1] if lhs else (), rhs[0][1], attrs)
      elif op == "custom-call" and re.search(r"splash|mha|flash|attention", name + attrs, re.I):
        # QK^T + PV of a dense [B,H,S,D] x [B,H,K,D] pair = 4BHSKD; the backward kernels redo QK^T:
        # dq = 3 matmuls, dkv = 4. Block-sparse masks are ignored (an upper bound for causal masks).
        ops_ = [s for d, s in _arrays(attrs.partition("operand_layout_constraints=")[2]) if d in ("bf16", "f16", "f32")]
        four = [s for s in ops_ if len(s) == 4]
        if len(four) < 2:   # a kernel called per batch row (in a loop): [H, S, D] operands
          four = [(1,) + s for s in ops_ if len(s) == 3]
        if len(four) >= 2:
          (b, h, s, d), kk = four[0], four[1][2]
          kind, pairs = (3, 2.0) if "dkv" in name else (2, 1.5) if "dq" in name else (1, 1.0)
          acc[kind] += pairs * 4.0 * b * h * s * kk * d
      if not fused and op not in _NO_TRAFFIC:
        acc[4] += _nbytes(typ) + sum(_nbytes(shapes.get(o, "")) for o in ops)
      if op == "while":
        n = trip(called.get("condition", ""), attrs, called["body"])
        acc += n * visit(called["body"], False)
      elif op == "fusion" and "calls" in called:
        acc[:4] += visit(called["calls"], True)[:4]
      elif op in ("call", "async-start", "call-start") and "calls" in called or op == "call" and "to_apply" in called:
        acc += visit(called.get("calls") or called["to_apply"], fused)
      elif op == "conditional":
        branches = re.findall(r"%([\w.\-]+)", (re.search(r"branch_computations=\{([^}]*)\}", attrs) or
                                               re.search(r"()", "")).group(1))
        subs = [visit(b, fused) for b in branches] or [np.zeros(5)]
        acc += max(subs, key=lambda v: (v[0] + v[1:4].sum(), v[4]))
    memo[key] = acc
    return acc

  dot, fwd, dq, dkv, traffic = (float(v) for v in visit(entry, False))
  return {"matmul_flops": dot, "attention_kernel_flops": fwd + dq + dkv, "bytes": traffic,
          "attention_kernel_by_kind": {"forward": fwd, "dq": dq, "dkv": dkv}, "unknown_trip_loops": unknown_loops}


def _sig(x: float, digits: int = 4) -> float:
  return float(f"{x:.{digits}g}")


def _report(compiled, chip: str, chips: int, terms: dict, remat: str, cache_specs: dict,
            extra: dict | None = None) -> dict:
  """Compiled per-chip work beside the analytic work / chips (their ratio = replication), and a roofline.

  `terms` (analytic_terms) are the whole step over all chips, remat recompute included, so
  replication 1.0 means each chip does 1/chips of the work; 16 on 16 chips means every chip does
  all of it. `extra` terms are reported but not summed (not matmul work)."""
  analytic_flops = sum(terms.values())
  text = compiled.as_text()
  hc = hlo_costs(text)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  total = hc["matmul_flops"] + hc["attention_kernel_flops"]
  per_chip_model = analytic_flops / chips
  peak, bw = PEAK_TFLOPS.get(chip, 1.0) * 1e12, HBM_GBPS.get(chip, 1.0) * 1e9
  compute_s, memory_s = total / peak, hc["bytes"] / bw
  return {
      "compiled_per_chip": {"tflop": _sig(total / 1e12), "matmul_tflop": _sig(hc["matmul_flops"] / 1e12),
                            "attention_kernel_tflop": _sig(hc["attention_kernel_flops"] / 1e12),
                            "attention_kernel_by_kind_tflop": {k: _sig(v / 1e12)
                                                               for k, v in hc["attention_kernel_by_kind"].items()},
                            "hbm_tbytes": _sig(hc["bytes"] / 1e12),
                            "xla_cost_analysis_tflop": _sig(float(cost.get("flops", 0.0)) / 1e12),   # loop bodies once
                            "unknown_trip_loops": len(hc["unknown_trip_loops"])},
      "analytic_tflop_per_chip": _sig(per_chip_model / 1e12),
      "analytic_terms_tflop_per_chip": {k: _sig(v / chips / 1e12) for k, v in terms.items()},
      **({"analytic_not_summed_tflop_per_chip": {k: _sig(v / chips / 1e12) for k, v in extra.items()}}
         if extra else {}),
      "replication": _sig(total / per_chip_model) if per_chip_model else float("nan"),
      "remat": remat,
      "roofline_seconds": {"compute": _sig(compute_s), "memory": _sig(memory_s),
                           "lower_bound": _sig(max(compute_s, memory_s)),
                           "bound": "compute" if compute_s >= memory_s else "memory",
                           "peak_tflops": peak / 1e12, "hbm_gbps": bw / 1e9},
      "caches_per_chip": _cache_shapes(cache_specs, _entry_parameter_shapes(text)),
  }


def _entry_parameter_shapes(text: str) -> list[tuple[int, ...]]:
  """Per-chip shapes of the compiled entry computation's parameters (post-partitioning)."""
  head = next((line for line in text.splitlines() if line.startswith("ENTRY")), "")
  return [s for _, s in _arrays(head.split("->")[0])]


def _cache_shapes(specs: dict, entry_shapes: list) -> dict:
  """{name: global shape, per-chip shape, sharded?, found among the compiled entry parameters?}."""
  out = {}
  for name, (shape, sh) in specs.items():
    local = tuple(sh.shard_shape(tuple(shape))) if sh is not None else tuple(shape)
    out[name] = {"global": list(shape), "per_chip": list(local), "sharded": local != tuple(shape),
                 "in_compiled_hlo": local in entry_shapes}
  return out


def _cache_specs(tree, shardings=None) -> dict:
  """(shape, sharding) of the K/V leaves of every TextCache / VisionCache in an argument tree."""
  is_cache = lambda x: isinstance(x, (TextCache, VisionCache))
  caches = [(jax.tree_util.keystr(p), c) for p, c in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_cache)[0]
            if is_cache(c)]
  shard = ([c for c in jax.tree_util.tree_flatten(shardings, is_leaf=is_cache)[0] if is_cache(c)]
           if shardings is not None else [None] * len(caches))
  out = {}
  for (path, c), s in zip(caches, shard):
    kind = "text" if isinstance(c, TextCache) else "vision"
    for f in ("k", "v"):
      x = getattr(c, f)
      sh = getattr(s, f) if s is not None else getattr(x, "sharding", None)
      out[f"{kind}_{f}{path}"] = (tuple(x.shape), sh)
  return out


def summary(r: dict) -> str:
  """One line: the replication, the roofline bound and the caches' placement."""
  if r.get("stage"):
    from wc_jax.plan import stages as plan_stages
    return plan_stages.summary(r)
  c, roof, caches = r["compiled_per_chip"], r["roofline_seconds"], r["caches_per_chip"]
  sharded = sum(v["sharded"] for v in caches.values())
  return (f"{r['path']} on {r['topology']} ({r['chips']} chips): {r['per_chip_gib']['total']} GiB/chip "
          f"(fits: {r['fits']}); compiled {c['tflop']} TFLOP/chip vs analytic {r['analytic_tflop_per_chip']} "
          f"-> replication {r['replication']} ({r['remat']}); roofline >= {roof['lower_bound']} s "
          f"({roof['bound']}-bound); K/V caches sharded: {sharded}/{len(caches)}; replicated activations: "
          f"{len(r.get('replicated_activations', []))}")


TABLE_HEADER = ("| topology | chips | path | GiB/chip | fits | analytic TFLOP/chip | compiled TFLOP/chip | matmul | "
                "attention kernels | replication | roofline compute s | memory s | lower bound s | caches sharded |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
  """One markdown row of a plan result (under TABLE_HEADER)."""
  c, roof = r["compiled_per_chip"], r["roofline_seconds"]
  caches = r["caches_per_chip"]
  sharded = sum(v["sharded"] for v in caches.values())
  path = f"{r['path']} (T={r['trajectories']})" if "trajectories" in r else r["path"]
  return (f"| {r['topology']} | {r['chips']} | {path} | {r['per_chip_gib']['total']} | {r['fits']} | "
          f"{r['analytic_tflop_per_chip']} | {c['tflop']} | {c['matmul_tflop']} | {c['attention_kernel_tflop']} | "
          f"{r['replication']} | {roof['compute']} | {roof['memory']} | {roof['lower_bound']} | "
          f"{sharded}/{len(caches)} |")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  out = plan(_CONFIG(), _TOPOLOGY(), _PATH(), int(_BATCH()), strict=bool(_STRICT()))
  print(json.dumps(out, indent=2))
  print(summary(out))
  if _JSON():
    with open(_JSON(), "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2)
  return 0

