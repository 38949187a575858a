"""Plans beyond the WorldPlay DiT: the reward stage of an RL step, and LingBot-World A14B.

    python -m wc_jax.plan --config=configs/hunyuan8b.py --topology=v5p:4x4x4 --path=rewards
    python -m wc_jax.plan --config=configs/hunyuan8b.py --topology=v5p:4x4x4 --path=rewards \
        --config.rl.trajectories_per_step=4
    python -m wc_jax.plan --config=configs/lingbot_a14b.py --topology=v5p:4x4x4 --path=denoise
    python -m wc_jax.plan --config=configs/lingbot_a14b.py --topology=v5p:4x4x4 --path=update

`rewards`: the three reward-stage programs of one RL step at full size on the DiT's mesh, each
compiled on abstract weights carrying their logical-axis shardings, the G x T candidates split
over the data axes as `score_candidates` does (padded to a multiple of the data shards):
VAE decode of the candidates' reward windows, DA3 poses of the decoded window frames (the
fine-action reward), HPSv3 mu of window frames 3::4 and the first frame with the quality prompt
(the drift reward). Per model: per-chip memory, compiled per-chip FLOPs (`plan.hlo_costs`),
the analytic FLOPs (`jaxpr_flops` of the unsharded program on the real N candidates, every
dot and convolution, scans times their length), replication, roofline, fits; and a total.

LingBot (`family = "lingbot"` configs): `denoise` is one sampler step of one expert with CFG
(the conditional and unconditional branches as one batch of 2, the camera in both); `update`
is an RL update of the trained expert (`rl.expert`, default the low-noise one): for every kept
sample x sampled sigma, the rollout policy's v_old (a policy-EMA copy) and the NFT loss of
wc_jax.rewards.nft on v_theta, forward + backward under the model's remat, gradients summed,
then clip + AdamW on fp32 master weights (bf16 compute) and the EMA update.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax import plan as plan_lib
from wc_jax import sharding
from wc_jax.rl import programs

GIB = 2 ** 30

# ----------------------------------------------------------------------------- counting

_CALLS_MAX = ("cond",)


def jaxpr_flops(fn: Callable, *args) -> float:
  """Matmul FLOPs of `fn(*args)` from its (unsharded) jaxpr: 2 x output x contraction of every
  dot_general, 2 x output x (input features x window) of every convolution, a scan's body times
  its length, the largest branch of a cond; code no output needs is dropped first. Custom
  kernels (pallas_call) count 0."""
  from jax.interpreters import partial_eval as pe
  closed = jax.make_jaxpr(fn)(*args)
  # drop what no output needs (e.g. DA3's depth head when only poses are returned), as XLA does
  jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
  return _count(jaxpr)


def _count(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in lc)
      continue
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      dn = eqn.params["dimension_numbers"]
      out_feat = rhs[dn.rhs_spec[0]]
      total += 2.0 * math.prod(out) * math.prod(rhs) / out_feat
      continue
    subs = [_count(j) for j in _sub_jaxprs(eqn.params)]
    if not subs:
      continue
    if name in _CALLS_MAX:
      total += max(subs)
    elif name == "scan":
      total += eqn.params["length"] * sum(subs)
    else:
      total += sum(subs)
  return total


def _sub_jaxprs(params: dict) -> list:
  out = []
  for v in params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(x, jax.extend.core.ClosedJaxpr):
        out.append(x.jaxpr)
      elif isinstance(x, jax.extend.core.Jaxpr):
        out.append(x)
  return out


def sharded_bytes(tree, shardings) -> int:
  """Per-chip bytes of `tree`'s arrays placed with `shardings` (the largest shard)."""
  leaves = jax.tree.leaves(tree)
  where = jax.tree.leaves(shardings)
  return int(sum(math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
                 for x, s in zip(leaves, where)))


def _chips(mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))


def _compile_and_report(fn, args, in_shardings, out_shardings, mesh, topology: str, what: str,
                        analytic_flops: float | dict, note: str, extra: dict | None = None, donate=()) -> dict:
  """Compiles `fn(*args)` for the topology; per-chip memory, compiled vs analytic FLOPs, roofline.
  `analytic_flops`: the whole step's FLOPs, or plan.analytic_terms' dict of them."""
  terms = dict(analytic_flops) if isinstance(analytic_flops, dict) else {"model": float(analytic_flops)}
  analytic_flops = sum(terms.values())
  chip = topology.split(":")[0]
  chips = _chips(mesh)
  with sharding.use_mesh(mesh):
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate)
    try:
      compiled = plan_lib._compile(jitted, args, topology, what)
    except jax.errors.JaxRuntimeError as e:   # XLA refuses a program larger than the chip's HBM
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      return _does_not_fit(str(e), topology, mesh, chip, chips, analytic_flops, extra)
  mem = compiled.memory_analysis()
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  hbm = plan_lib.HBM_GIB.get(chip)
  out = {
      "topology": topology, "chips": chips, "mesh": dict(mesh.shape),
      "per_chip_gib": {"arguments": round(mem.argument_size_in_bytes / GIB, 3),
                       "outputs": round(mem.output_size_in_bytes / GIB, 3),
                       "aliased": round(mem.alias_size_in_bytes / GIB, 3),
                       "temporaries": round(mem.temp_size_in_bytes / GIB, 3),
                       "total": round(per_chip / GIB, 3)},
      "per_chip_bytes": int(per_chip), "argument_bytes_per_chip": int(mem.argument_size_in_bytes),
      "hbm_per_chip_gib": hbm, "fits": (per_chip / GIB) <= (hbm or float("inf")),
      "analytic_tflop_total": plan_lib._sig(analytic_flops / 1e12),
  }
  out.update(extra or {})
  out.update(plan_lib._report(compiled, chip, chips, terms, note, {}))
  return out


def _does_not_fit(message: str, topology, mesh, chip, chips, analytic_flops, extra) -> dict:
  """The row of a program XLA will not place on the chip: its message and the temporaries it names."""
  m = re.search(r"temporaries \(([\d.]+)G\)", message)
  line = next((x for x in message.splitlines() if "RESOURCE_EXHAUSTED" in x), message.splitlines()[0])
  return {"topology": topology, "chips": chips, "mesh": dict(mesh.shape), "fits": False,
          "hbm_per_chip_gib": plan_lib.HBM_GIB.get(chip), "error": line.strip(),
          "per_chip_gib": {"temporaries": float(m.group(1)) if m else None, "total": None},
          "analytic_tflop_total": plan_lib._sig(analytic_flops / 1e12),
          "analytic_tflop_per_chip": plan_lib._sig(analytic_flops / chips / 1e12), **(extra or {})}


def _param_shardings(state, mesh):
  return sharding.state_shardings(state, mesh)


def _batch_sharding(mesh, shape) -> NamedSharding:
  spec = sharding.logical_to_spec(("activation_batch",) + (None,) * (len(shape) - 1), mesh=mesh)
  return NamedSharding(mesh, sharding.fit_spec(spec, tuple(shape), mesh))


def _n_params(state) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))

# ----------------------------------------------------------------------------- the reward stage


def reward_model_configs(cfg) -> dict:
  """Full-size configs of the reward stage's models: the VAE of `cfg.vae` (its sizes are the
  released HunyuanVideo-1.5 VAE's), DA3-Giant (the preset the released checkpoint names), HPSv3
  (Qwen2-VL-7B + head) with the execution options of `rewards.hpsv3`."""
  from wc_jax.models.da3 import config as da3_config
  from wc_jax.models.qwen2vl.hpsv3 import HPSV3
  from wc_jax.models.vae import VAEConfig
  latent = int(cfg.model.latent_channels)
  vae = VAEConfig(latent_channels=latent, block_out_channels=tuple(cfg.vae.block_out_channels),
                  layers_per_block=int(cfg.vae.layers_per_block))
  h = cfg.rewards.get("hpsv3", {})
  opts = {k: h.get(k) for k in ("dtype", "attention_impl", "remat_policy") if h.get(k, None)}
  return {"vae": vae, "pose": da3_config.preset("da3-giant"),
          "hpsv3": HPSV3.with_execution(**opts) if opts else HPSV3}


def reward_window(cfg) -> tuple[int, int]:
  """(latents decoded per candidate, frames kept) of a later clip's reward window."""
  from wc_jax.rewards.stage import window_frame_range
  chunk = int(cfg.model.chunk_latents)
  window = cfg.rl.get("reward_window", "wc_jax")
  start, stop = window_frame_range(2, chunk, window)
  latents = (3 + chunk) if window == "released" else (1 + chunk)
  return latents, stop - start


def plan_rewards(cfg, topology: str, mesh=None, configs: dict | None = None,
                 models: tuple[str, ...] = ("vae", "pose", "hpsv3")) -> dict:
  """The reward stage of one RL step (G x T candidates) on `topology`, per model and in total."""
  from wc_jax.models.vae import model as vae_lib
  from wc_jax.models.da3 import model as da3_model
  from wc_jax.models.qwen2vl import processor
  from wc_jax.models.qwen2vl.hpsv3 import HPSv3Model
  from wc_jax.rewards.quality import FRAME_OFFSET, FRAME_STRIDE
  mesh = mesh or plan_lib.topology_mesh(topology, dict(cfg.mesh))
  configs = {**reward_model_configs(cfg), **(configs or {})}
  g, t = int(cfg.rl.group_size), int(cfg.rl.get("trajectories_per_step", 1))
  n = g * t
  shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
  rows = -(-n // shards) * shards                    # score_candidates pads N to the data shards
  latents, kept = reward_window(cfg)
  s = cfg.sampling
  vcfg = configs["vae"]
  fs = vcfg.ffactor_spatial
  height, width = s.latent_height * fs, s.latent_width * fs
  sds = jax.ShapeDtypeStruct
  rep = NamedSharding(mesh, P())
  results = {}

  def run(name, model_abstract, make_fn, make_inputs, note, extra):
    graphdef, state = nnx.split(model_abstract)
    pshard = _param_shardings(state, mesh)
    fn = make_fn(graphdef)
    analytic = jaxpr_flops(fn, state, *make_inputs(n))
    inputs = make_inputs(rows)
    ishard = tuple(_batch_sharding(mesh, x.shape) for x in inputs)
    out_shape = jax.eval_shape(fn, state, *inputs)
    oshard = jax.tree.map(lambda x: _batch_sharding(mesh, x.shape) if x.ndim else rep, out_shape)
    r = _compile_and_report(fn, (state, *inputs), (pshard,) + ishard, oshard, mesh, topology,
                            f"{name} of the reward stage", analytic, note,
                            {"params": _n_params(state), "params_billion": round(_n_params(state) / 1e9, 3),
                             "param_bytes_per_chip": sharded_bytes(state, pshard),
                             "input_shapes": [list(x.shape) for x in inputs], **extra})
    results[name] = r

  if "vae" in models:
    def vae_fn(graphdef):
      def fn(state, z):
        model = nnx.merge(graphdef, state)
        video = vae_lib.decode(model, vae_lib.unscale_latents(model.config, z))
        frames = jnp.clip((jnp.moveaxis(video, 1, -1) + 1.0) / 2.0, 0.0, 1.0)
        return frames[:, -kept:]
      return fn
    lat = (vcfg.latent_channels, latents, s.latent_height, s.latent_width)
    run("vae", vae_lib.abstract_model(vcfg), vae_fn, lambda b: (sds((b,) + lat, jnp.float32),),
        "inference: decode of each candidate's reward window",
        {"per_candidate": f"{latents} latents -> {kept} kept frames of {height}x{width}"})

  if "pose" in models:
    pcfg = configs["pose"]
    res = int(cfg.rewards.pose.get("process_res", 504))

    def pose_fn(graphdef):
      def fn(state, frames):
        model = nnx.merge(graphdef, state)
        return da3_model.make_pose_model(model, process_res=res)(frames)
      return fn
    run("pose", da3_model.abstract_model(pcfg), pose_fn,
        lambda b: (sds((b, kept, height, width, 3), jnp.float32),),
        "inference: DA3 poses of each candidate's window frames",
        {"per_candidate": f"{kept} frames at process_res {res}"})

  if "hpsv3" in models:
    hcfg = configs["hpsv3"]
    scored = len(range(FRAME_OFFSET, kept, FRAME_STRIDE)) + 1      # frames 3::4 + the first frame
    pixels = int(cfg.rewards.get("hpsv3", {}).get("pixels", processor.HPSV3_PIXELS))
    rh, rw = processor.smart_resize(height, width, processor.FACTOR, pixels, pixels)
    ps = hcfg.vision.patch_size
    grid1 = (1, rh // ps, rw // ps)
    per_image = grid1[1] * grid1[2]
    row = 3 * hcfg.vision.temporal_patch_size * ps * ps
    ids = np.asarray(processor.chat_ids(processor.QUALITY_PROMPT,
                                        int(processor.image_token_count(np.asarray([grid1]))[0])), np.int32)

    def hps_fn(graphdef, b):
      grid = np.tile(np.asarray([grid1]), (b * scored, 1))

      def fn(state, pv):
        model = nnx.merge(graphdef, state)
        tok = jnp.broadcast_to(jnp.asarray(ids)[None], (b * scored, ids.size))
        mu = model(tok, jnp.ones(tok.shape, jnp.int32), pv.reshape(-1, row), grid)[:, 0]
        return mu.reshape(b, scored)
      return fn

    abstract = nnx.eval_shape(lambda: HPSv3Model(hcfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pshard = _param_shardings(state, mesh)
    inputs = lambda b: (sds((b, scored * per_image, row), jnp.float32),)
    analytic = jaxpr_flops(hps_fn(graphdef, n), state, *inputs(n))
    x = inputs(rows)
    fn = hps_fn(graphdef, rows)
    results["hpsv3"] = _compile_and_report(
        fn, (state, *x), (pshard, _batch_sharding(mesh, x[0].shape)), _batch_sharding(mesh, (rows, scored)),
        mesh, topology, "HPSv3 of the reward stage", analytic, "inference: HPSv3 mu of frames 3::4 + the first",
        {"params": _n_params(state), "params_billion": round(_n_params(state) / 1e9, 3), "param_bytes_per_chip": sharded_bytes(state, pshard),
         "input_shapes": [list(x[0].shape)],
         "hand_count_tflop_total": plan_lib._sig(hpsv3_forward_flops(hcfg, n * scored, per_image, ids.size) / 1e12),
         "per_candidate": f"{scored} images of {rh}x{rw} ({per_image} patches, {ids.size} tokens each)"})

  return _rewards_total(cfg, topology, mesh, results, n, rows)


def _rewards_total(cfg, topology, mesh, results: dict, n: int, rows: int) -> dict:
  """All models resident (their weights summed) + the largest program's activations; FLOPs summed."""
  chip = topology.split(":")[0]
  failed = sorted(k for k, r in results.items() if "error" in r)
  if failed:
    return {"stage": "rewards", "path": "rewards", "topology": topology, "chips": _chips(mesh),
            "mesh": dict(mesh.shape), "candidates": n, "rows_after_padding": rows, "models": results,
            "trajectories": int(cfg.rl.get("trajectories_per_step", 1)),
            "total": {"fits": False, "does_not_fit": failed}}
  weights = sum(r["param_bytes_per_chip"] for r in results.values())
  peak_rest = max((r["per_chip_bytes"] - r["param_bytes_per_chip"] for r in results.values()), default=0)
  resident = weights + peak_rest
  hbm = plan_lib.HBM_GIB.get(chip)
  comp = sum(r["compiled_per_chip"]["tflop"] for r in results.values())
  ana = sum(r["analytic_tflop_per_chip"] for r in results.values())
  lower = sum(r["roofline_seconds"]["lower_bound"] for r in results.values())
  return {
      "stage": "rewards", "path": "rewards", "topology": topology, "chips": _chips(mesh), "mesh": dict(mesh.shape),
      "group_size": int(cfg.rl.group_size), "trajectories": int(cfg.rl.get("trajectories_per_step", 1)),
      "candidates": n, "rows_after_padding": rows, "reward_window": cfg.rl.get("reward_window", "wc_jax"),
      "models": results,
      "total": {"weights_gib_per_chip": round(weights / GIB, 3),
                "resident_gib_per_chip": round(resident / GIB, 3),
                "largest_program_gib_per_chip": round(max(r["per_chip_bytes"] for r in results.values()) / GIB, 3),
                "fits": resident / GIB <= (hbm or float("inf")), "hbm_per_chip_gib": hbm,
                "compiled_tflop_per_chip": plan_lib._sig(comp), "analytic_tflop_per_chip": plan_lib._sig(ana),
                "replication": plan_lib._sig(comp / ana) if ana else float("nan"),
                "roofline_lower_bound_seconds": plan_lib._sig(lower)},
  }


def hpsv3_forward_flops(hcfg, images: int, patches: int, tokens: int) -> float:
  """Hand count of HPSv3 on `images` images of `patches` patches each, `tokens` LM tokens per image
  (dense attention, as the XLA path computes it; the LM runs no vocabulary projection)."""
  v, t = hcfg.vision, hcfg.text
  e, p = v.embed_dim, patches
  row = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
  merged, wide = p // v.spatial_merge_size ** 2, e * v.spatial_merge_size ** 2
  vision = (2 * p * row * e + v.depth * (2 * p * e * 4 * e + 2 * 2 * p * e * v.intermediate_size + 4 * p * p * e)
            + 2 * merged * wide * wide + 2 * merged * wide * v.out_hidden_size)
  d, n = t.hidden_size, tokens
  kv = t.num_key_value_heads * (d // t.num_attention_heads)
  lm = t.num_hidden_layers * (2 * 2 * n * d * d + 2 * 2 * n * d * kv + 3 * 2 * n * d * t.intermediate_size
                              + 4 * n * n * d)
  dims = (d,) + tuple(hcfg.head_hidden) + (hcfg.output_dim,)
  head = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
  return float(images * (vision + lm + head))


REWARDS_HEADER = ("| topology | T | candidates (rows) | model | params B | GiB/chip | weights GiB/chip | fits | "
                  "analytic TFLOP/chip | compiled TFLOP/chip | replication | roofline s (bound) |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|---|")


def rewards_rows(r: dict) -> str:
  """Markdown rows (one per model and the total) of a `plan_rewards` result."""
  lines = []
  head = f"| {r['topology']} | {r['trajectories']} | {r['candidates']} ({r['rows_after_padding']}) |"
  for name, m in r["models"].items():
    if "error" in m:
      lines.append(f"{head} {name} | {m['params_billion']} | **no**: HLO temporaries {m['per_chip_gib']['temporaries']} "
                   f"GiB > {m['hbm_per_chip_gib']} GiB | | False | {m['analytic_tflop_per_chip']} | | | |")
      continue
    roof = m["roofline_seconds"]
    lines.append(f"{head} {name} | {m['params_billion']} | {m['per_chip_gib']['total']} | "
                 f"{round(m['param_bytes_per_chip'] / GIB, 3)} | {m['fits']} | {m['analytic_tflop_per_chip']} | "
                 f"{m['compiled_per_chip']['tflop']} | {m['replication']} | {roof['lower_bound']} ({roof['bound']}) |")
  tot = r["total"]
  if not tot.get("fits", True) and "does_not_fit" in tot:
    return "\n".join(lines)
  lines.append(f"{head} **total** | {round(sum(m['params_billion'] for m in r['models'].values()), 3)} | "
               f"{tot['resident_gib_per_chip']} | {tot['weights_gib_per_chip']} | {tot['fits']} | "
               f"{tot['analytic_tflop_per_chip']} | {tot['compiled_tflop_per_chip']} | {tot['replication']} | "
               f"{tot['roofline_lower_bound_seconds']} |")
  return "\n".join(lines)


def rewards_summary(r: dict) -> str:
  tot = r["total"]
  if "does_not_fit" in tot:
    return f"rewards on {r['topology']} ({r['chips']} chips): does not fit: {tot['does_not_fit']}"
  parts = ", ".join(f"{k} {m['per_chip_gib']['total']} GiB/chip (replication {m['replication']})"
                    for k, m in r["models"].items())
  return (f"rewards on {r['topology']} ({r['chips']} chips), {r['candidates']} candidates: {parts}; "
          f"resident {tot['resident_gib_per_chip']} GiB/chip (fits: {tot['fits']}); compiled "
          f"{tot['compiled_tflop_per_chip']} TFLOP/chip vs analytic {tot['analytic_tflop_per_chip']}; "
          f"roofline >= {tot['roofline_lower_bound_seconds']} s")

# ----------------------------------------------------------------------------- LingBot-World

LINGBOT_PATHS = ("denoise", "update")


def lingbot_tokens(cfg) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """(latent [F, H, W], token grid) of the configured video."""
  s = cfg.sampling
  st, sh, sw = s.vae_stride
  f = (int(s.frame_num) - 1) // st + 1
  lat = (f, int(s.height) // sh, int(s.width) // sw)
  pt, ph, pw = tuple(cfg.model.patch_size)
  return lat, (lat[0] // pt, lat[1] // ph, lat[2] // pw)


def lingbot_forward_flops(mcfg, tokens: int, batch: int = 1, camera: bool = True) -> float:
  """Hand count of one expert forward (matmuls + attention), `batch` samples of `tokens` tokens."""
  d, f, lt, pv = mcfg.dim, mcfg.ffn_dim, mcfg.text_len, mcfg.patch_volume
  n = tokens
  per_block = (4 * 2 * n * d * d          # self-attention q, k, v, o
               + 4 * n * n * d            # QK^T and PV
               + 2 * 2 * n * d * d        # cross-attention q, o
               + 2 * 2 * lt * d * d       # cross-attention k, v on the text rows
               + 4 * n * lt * d           # cross QK^T, PV
               + 2 * 2 * n * d * f)       # FFN
  if camera:
    per_block += 4 * 2 * n * d * d        # camera injector 1, 2, scale, shift
  outside = (2 * n * mcfg.in_dim * pv * d + 2 * n * mcfg.out_dim * pv * d
             + 2 * lt * (mcfg.text_dim * d + d * d))
  if camera:
    outside += 2 * n * mcfg.camera_channels * pv * d + 2 * 2 * n * d * d
  return float(batch * (mcfg.num_layers * per_block + outside))


def _lingbot_inputs(cfg, mcfg, batch: int):
  lat, _ = lingbot_tokens(cfg)
  sds = jax.ShapeDtypeStruct
  cdt = mcfg.compute_dtype
  noise_ch = int(cfg.sampling.latent_channels)
  return dict(x=sds((batch, noise_ch) + lat, jnp.float32),
              y=sds((batch, mcfg.in_dim - noise_ch) + lat, jnp.float32),
              context=sds((batch, mcfg.text_len, mcfg.text_dim), cdt),
              cam=sds((batch, mcfg.camera_channels) + lat, cdt))


def plan_lingbot(cfg, topology: str, path: str, mesh=None) -> dict:
  """One CFG denoise step of an expert (`denoise`) or an RL update of the trained expert (`update`)."""
  from wc_jax.models.lingbot import dit as lingbot_dit
  from wc_jax.models.lingbot.config import from_config
  if path not in LINGBOT_PATHS:
    from wc_jax.rl.config import ConfigError
    raise ConfigError("--path", path, f"a LingBot-World config plans one of {LINGBOT_PATHS}")
  mcfg = from_config(cfg.model)
  mesh = mesh or plan_lib.topology_mesh(topology, dict(cfg.mesh))
  abstract = lingbot_dit.abstract_model(mcfg)
  apply, state = lingbot_dit.functional(abstract)
  pshard = _param_shardings(state, mesh)
  _, grid = lingbot_tokens(cfg)
  tokens = int(np.prod(grid))
  common = {"stage": "lingbot", "path": f"lingbot {path}", "params": _n_params(state),
            "params_billion": round(_n_params(state) / 1e9, 3), "tokens": tokens,
            "attention_impl": mcfg.attention_impl, "remat_policy": mcfg.remat_policy, "compute_dtype": mcfg.dtype,
            "param_dtype": mcfg.param_dtype, "param_bytes_per_chip": sharded_bytes(state, pshard)}
  if path == "denoise":
    return _lingbot_denoise(cfg, mcfg, apply, state, pshard, mesh, topology, tokens, common)
  return _lingbot_update(cfg, mcfg, apply, state, pshard, mesh, topology, tokens, common)


def _lingbot_denoise(cfg, mcfg, apply, state, pshard, mesh, topology, tokens, common) -> dict:
  inp = _lingbot_inputs(cfg, mcfg, 1)
  sds = jax.ShapeDtypeStruct
  guide = float(cfg.sampling.guide_scale[0])

  def step(params, x, y, t, context, neg_context, cam):
    """CFG velocity: both branches as one batch of 2, the camera in both."""
    xx, yy = jnp.concatenate([x, x]), jnp.concatenate([y, y])
    ctx = jnp.concatenate([context, neg_context])
    v = apply(params, xx, jnp.concatenate([t, t]), ctx, y=yy, cam=jnp.concatenate([cam, cam]))
    v_c, v_u = v[:1], v[1:]
    return v_u + guide * (v_c - v_u)

  args = (state, inp["x"], inp["y"], sds((1,), jnp.float32), inp["context"], inp["context"], inp["cam"])
  rep = NamedSharding(mesh, P())
  analytic = lingbot_forward_flops(mcfg, tokens, batch=2)
  r = _compile_and_report(step, args, (pshard,) + (rep,) * 6, rep, mesh, topology, "LingBot CFG denoise step",
                          analytic, "inference: 2 CFG branches, one forward each", common)
  return r


def _lingbot_update(cfg, mcfg, apply, state, pshard, mesh, topology, tokens, common) -> dict:
  """Lowers the LingBot RL trainer's own update (wc_jax.rl.lingbot.make_update) on abstract A14B
  weights: K kept samples x the sigmas drawn in the trained expert's timestep range. With
  rl.expert='both' the trainer runs each expert's update in turn; one of them is planned (the
  same program and memory for either)."""
  from wc_jax.rl import lingbot as lingbot_rl
  rl = cfg.rl
  expert = lingbot_rl.trained_experts(rl.get("expert", "low"))[0]
  settings = lingbot_rl.update_settings(cfg, expert)
  k, n_sig = settings["kept"], settings["n_sigmas"]
  micro = k * n_sig
  tx = lingbot_rl.make_optimizer(cfg.optim)
  update = lingbot_rl.make_update(apply, tx, **settings)
  inp = _lingbot_inputs(cfg, mcfg, 1)
  sds = jax.ShapeDtypeStruct
  train_state = jax.eval_shape(lambda p: lingbot_rl.init_train_state(p, tx), state)
  st_shard = sharding.state_shardings(train_state, mesh)
  rep = NamedSharding(mesh, P())
  args = (train_state, sds((k,) + inp["x"].shape[1:], jnp.float32), inp["y"], inp["context"], inp["cam"],
          sds((k, n_sig), jnp.float32), sds((k,), jnp.float32), jax.random.key(0))
  args = (programs.abstract(args[0], st_shard),) + args[1:]
  passes = micro * (1 + 3 + (1 if mcfg.remat_policy != "none" else 0))
  analytic = lingbot_forward_flops(mcfg, tokens) * passes
  r = _compile_and_report(
      update, args, (st_shard,) + (rep,) * 7, (st_shard, rep), mesh, topology,
      "LingBot RL update", analytic,
      f"per pass v_old fwd 1 + fwd 1 + bwd 2 (+ remat 1, {mcfg.remat_policy}); {k} kept x {n_sig} sigmas "
      f"of the {expert}-noise expert's {len(lingbot_rl.expert_sigmas(cfg, expert))} rollout steps",
      {**common, "expert": rl.get("expert", "low"), "kept": k, "sigmas_per_sample": n_sig, "passes": passes,
       "train_state_bytes_per_chip": sharded_bytes(train_state, st_shard),
       "optimizer": "clip_by_global_norm + AdamW, fp32 master weights + policy EMA"},
      donate=(0,))   # the train state is updated in place, as the trainer's update program donates it
  return r


def lingbot_row(r: dict) -> str:
  if "error" in r:
    return (f"| {r['topology']} | {r['chips']} | {r['mesh']} | {r['path']} | – | **no**: HLO temporaries "
            f"{r['per_chip_gib']['temporaries']} GiB > {r['hbm_per_chip_gib']} GiB HBM | "
            f"{r['analytic_tflop_per_chip']} | | | |")
  roof = r["roofline_seconds"]
  return (f"| {r['topology']} | {r['chips']} | {r['mesh']} | {r['path']} | {r['per_chip_gib']['total']} | {r['fits']} | "
          f"{r['analytic_tflop_per_chip']} | {r['compiled_per_chip']['tflop']} | {r['replication']} | "
          f"{roof['lower_bound']} ({roof['bound']}) |")


LINGBOT_HEADER = ("| topology | chips | mesh | path | GiB/chip | fits | analytic TFLOP/chip | compiled TFLOP/chip | "
                  "replication | roofline s (bound) |\n|---|---|---|---|---|---|---|---|---|---|")


def lingbot_summary(r: dict) -> str:
  if "error" in r:
    return f"{r['path']} on {r['topology']} ({r['chips']} chips, mesh {r['mesh']}): does not fit: {r['error']}"
  return (f"{r['path']} on {r['topology']} ({r['chips']} chips, mesh {r['mesh']}): {r['per_chip_gib']['total']} "
          f"GiB/chip (fits: {r['fits']}); compiled {r['compiled_per_chip']['tflop']} TFLOP/chip vs analytic "
          f"{r['analytic_tflop_per_chip']} -> replication {r['replication']}; roofline >= "
          f"{r['roofline_seconds']['lower_bound']} s")


def plan(cfg, topology: str, path: str) -> dict:
  """Dispatch from wc_jax.plan: the reward stage, or a LingBot-World path."""
  if cfg.get("family", "worldplay") == "lingbot":
    return plan_lingbot(cfg, topology, path)
  return plan_rewards(cfg, topology)


def summary(r: dict) -> str:
  return rewards_summary(r) if r.get("path") == "rewards" else lingbot_summary(r)

