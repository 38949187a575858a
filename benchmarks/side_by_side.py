"""wc_jax vs the PyTorch reference DiT, same config, same weights, same inputs, same machine.

    python benchmarks/side_by_side.py --reference /path/to/HY-WorldPlay [--torch-path /tmp/torchenv]

Builds the reference `HunyuanVideo_1_5_DiffusionTransformer` (hyvideo/models/transformers/
worldplay_1_5_transformer.py of a local checkout, kept outside this repository) with
`add_action_parameters()`, re-draws every parameter from a fixed seed (the parameters the reference
zero-initialises would otherwise hide disagreements), converts its state dict with
wc_jax.convert.dit, and checks that both give the same outputs. Then it times, in interleaved arms
(reference, wc_jax per --impls; median, min, spread over --reps; jit compile reported apart):

  full forward     bidirectional forward over --frames latents (the reference's forward_bi);
  context pass     the context latents through every block, returning the vision K/V cache;
  AR denoise step  one denoising step of a 4-latent chunk against [text cache; context cache].

Everything runs in float32 on the default device (CPU for both unless torch sees a GPU and jax
is on one too). torch may live outside this environment (--torch-path, appended to sys.path;
needs torch, einops, loguru, diffusers). `transformers`, which the reference imports only for its
ByT5 text encoder (not used here), is stubbed when missing.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

# the reference hard-codes its ByT5 mapper widths (1472 -> 2048 -> 2048 -> hidden)
REF_BYT5 = {"in_dim": 1472, "hidden_dim": 2048, "out_dim": 2048}


def import_reference(reference: str, torch_path: str = ""):
  """The reference transformer class, imported from a local checkout."""
  if torch_path:
    sys.path.append(torch_path)        # after this environment's packages: numpy etc. stay ours
  sys.path.append(str(pathlib.Path(reference).resolve()))
  from diffusers.models import ModelMixin  # noqa: F401  (before any stub: diffusers probes for transformers)
  try:
    import transformers  # noqa: F401
  except ImportError:                  # only the ByT5 *encoder* needs it; the mapper is plain torch
    def cls_stub(name):   # any class the text encoders name; never instantiated here
      if not name[:1].isupper():
        raise AttributeError(name)
      return type(name, (), {})
    for mod in ("transformers", "transformers.utils"):
      stub = types.ModuleType(mod)
      stub.__getattr__ = cls_stub
      sys.modules[mod] = stub
  from hyvideo.commons import infer_state, parallel_states
  from hyvideo.models.transformers.worldplay_1_5_transformer import HunyuanVideo_1_5_DiffusionTransformer
  # no sequence parallelism (sp = 1); the reference's default state builds a CUDA device mesh
  setattr(parallel_states, "__parallel_dims",
          types.SimpleNamespace(sp=1, world_size=1, sp_enabled=False, dp_enabled=False, sp_rank=0))
  setattr(infer_state, "__infer_state", infer_state.InferState())   # defaults: no sage attention, no compile
  return HunyuanVideo_1_5_DiffusionTransformer


def constructor_kwargs(args) -> dict:
  hd = args.hidden // args.heads
  t = hd // 8
  rope = [t, (hd - t) // 2, hd - t - (hd - t) // 2]
  return dict(patch_size=[1, 1, 1], in_channels=args.channels, concat_condition=True, out_channels=args.channels,
              hidden_size=args.hidden, heads_num=args.heads, mlp_width_ratio=4.0, mlp_act_type="gelu_tanh",
              mm_double_blocks_depth=args.layers, mm_single_blocks_depth=0, rope_dim_list=rope, qkv_bias=True,
              qk_norm=True, qk_norm_type="rms", guidance_embed=False, use_meanflow=False,
              text_projection="single_refiner", use_attention_mask=True, text_states_dim=args.text_dim,
              text_states_dim_2=None, text_pool_type=None, rope_theta=256, attn_mode="torch", attn_param=None,
              glyph_byT5_v2=True, vision_projection="linear", vision_states_dim=args.vision_dim,
              is_reshape_temporal_channels=False, use_cond_type_embedding=True, ideal_resolution=None,
              ideal_task=None)


def build_reference(cls, ctor: dict, seed: int):
  import torch
  model = cls(**ctor)
  model.add_action_parameters()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel()))
      elif name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model.float().eval()


def build_ours(ref_model, ctor: dict, impl: str, workdir: str):
  from safetensors.numpy import save_file
  from wc_jax.convert import dit as convert_dit
  from wc_jax.convert.common import TensorSource
  path = os.path.join(workdir, "weights.safetensors")
  if not os.path.exists(path):
    save_file({k: v.detach().cpu().numpy().copy() for k, v in ref_model.state_dict().items()}, path)
  config = {"constructor_kwargs": ctor, "scratch_overrides": {"ByT5Mapper": dict(REF_BYT5)}}
  model_config, params = convert_dit.torch_to_params(TensorSource(path), config)
  return convert_dit.build_model(model_config, params, attention_impl=impl, dtype="float32")


def make_inputs(args, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  f32 = np.float32
  c, h, w = args.channels, args.height, args.width

  def latents(frames):
    x = rng.normal(size=(1, 2 * c + 1, frames, h, w)).astype(f32)
    x[:, 2 * c] = 0.0
    x[:, 2 * c, 0] = 1.0          # i2v task mask on latent frame 0
    return x

  def cams(frames):
    vm = np.tile(np.eye(4, dtype=f32), (1, frames, 1, 1))
    vm[..., :3, 3] = rng.normal(size=(1, frames, 3)) * 0.3
    K = np.tile(np.array([[0.9, 0, 0.5], [0, 1.6, 0.5], [0, 0, 1]], f32), (1, frames, 1, 1))
    return vm, K

  lt, lb, lv = args.text_tokens, args.byt5_tokens, args.vision_tokens
  text_mask = np.zeros((1, lt), np.int64)
  text_mask[:, : lt * 3 // 4] = 1
  byt5_mask = np.zeros((1, lb), np.int64)
  byt5_mask[:, : lb // 2] = 1
  d = dict(text_states=rng.normal(size=(1, lt, args.text_dim)).astype(f32), encoder_attention_mask=text_mask,
           byt5_text_states=rng.normal(size=(1, lb, REF_BYT5["in_dim"])).astype(f32), byt5_text_mask=byt5_mask,
           vision_states=rng.normal(size=(1, lv, args.vision_dim)).astype(f32))
  full_vm, full_K = cams(args.frames)
  d.update(full_hs=latents(args.frames), full_t=rng.uniform(0, 1000, size=(args.frames,)).astype(f32),
           full_action=rng.integers(0, 81, size=(args.frames,)).astype(f32), full_vm=full_vm, full_K=full_K)
  n = args.context
  ctx_vm, ctx_K = cams(n)
  d.update(ctx_hs=latents(n), ctx_t=np.full((n,), 14.0, f32), ctx_action=rng.integers(0, 81, (1, n)).astype(f32),
           ctx_vm=ctx_vm, ctx_K=ctx_K)
  tgt_vm, tgt_K = cams(4)
  d.update(tgt_hs=latents(4), tgt_t=np.full((4,), 700.0, f32), tgt_action=rng.integers(0, 81, (1, 4)).astype(f32),
           tgt_vm=tgt_vm, tgt_K=tgt_K)
  return d


class Reference:
  """The three calls on the torch model (no_grad, float32)."""

  def __init__(self, model, d):
    import torch
    # on the GPU when torch sees one (jax then runs there too), else CPU
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.torch, self.m = torch, model.to(self.device)
    self.d = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in d.items()}
    with torch.no_grad():
      self.txt_cache = model(bi_inference=False, ar_txt_inference=True, timestep_txt=self._zero(),
                             text_states=self.d["text_states"], encoder_attention_mask=self.d["encoder_attention_mask"],
                             vision_states=self.d["vision_states"], mask_type="i2v", extra_kwargs=self._byt5(),
                             cache_txt=True)

  def _zero(self):
    return self.torch.zeros(1, device=self.device)

  def sync(self, out):
    """Wait for the device (timing) and hand back `out`."""
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return out

  def _byt5(self):
    return {"byt5_text_states": self.d["byt5_text_states"], "byt5_text_mask": self.d["byt5_text_mask"]}

  def full(self):
    d = self.d
    with self.torch.no_grad():
      return self.m(hidden_states=d["full_hs"], timestep=d["full_t"], timestep_txt=self._zero(),
                    text_states=d["text_states"], text_states_2=None, encoder_attention_mask=d["encoder_attention_mask"],
                    vision_states=d["vision_states"], mask_type="i2v", extra_kwargs=self._byt5(), viewmats=d["full_vm"],
                    Ks=d["full_K"], action=d["full_action"], return_dict=False)[0]

  def context(self):
    d, n = self.d, self.d["ctx_hs"].shape[2]
    with self.torch.no_grad():
      return self.m(bi_inference=False, ar_vision_inference=True, hidden_states=d["ctx_hs"], timestep=d["ctx_t"],
                    action=d["ctx_action"], viewmats=d["ctx_vm"], Ks=d["ctx_K"], kv_cache=self.txt_cache,
                    cache_vision=True, rope_temporal_size=n, start_rope_start_idx=0, mask_type="i2v")

  def denoise(self, ctx_cache):
    d, n = self.d, self.d["ctx_hs"].shape[2]
    with self.torch.no_grad():
      return self.m(bi_inference=False, ar_vision_inference=True, hidden_states=d["tgt_hs"], timestep=d["tgt_t"],
                    action=d["tgt_action"], viewmats=d["tgt_vm"], Ks=d["tgt_K"], kv_cache=ctx_cache,
                    cache_vision=False, rope_temporal_size=n + 4, start_rope_start_idx=n, mask_type="i2v")[0]


class Ours:
  """The same three calls through wc_jax, each a compiled program (compile time kept)."""

  def __init__(self, model, d):
    from wc_jax.models.worldplay.model import functional
    self.apply, self.state = functional(model)
    self.d = {k: jnp.asarray(v) for k, v in d.items()}
    d = self.d
    self.text = model.encode_text(d["text_states"], d["encoder_attention_mask"], d["byt5_text_states"],
                                  d["byt5_text_mask"], d["vision_states"], jnp.zeros(1))
    apply = self.apply
    self.tcache = jax.jit(lambda st, x: apply(st, "text_cache", x))(self.state, self.text)
    self.compile_s = {}
    self.fns = {
        # text encoding included, as in the reference's forward_bi
        "full": self._compile("full", lambda st, hs, t, a, vm, K, ts, tm, bs, bm, vs: apply(
            st, "forward", hs, t, apply(st, "encode_text", ts, tm, bs, bm, vs, jnp.zeros(1)), action=a,
            viewmats=vm, Ks=K, causal=False),
            d["full_hs"], d["full_t"], d["full_action"], d["full_vm"], d["full_K"], d["text_states"],
            d["encoder_attention_mask"], d["byt5_text_states"], d["byt5_text_mask"], d["vision_states"]),
        "context": self._compile("context", lambda st, hs, t, a, vm, K, c: apply(
            st, "context_cache", hs, a, vm, K, c, timestep=t),
            d["ctx_hs"], d["ctx_t"], d["ctx_action"], d["ctx_vm"], d["ctx_K"], self.tcache),
    }
    self.vcache = self.fns["context"]()
    self.fns["denoise"] = self._compile("denoise", lambda st, hs, t, a, vm, K, tc, vc: apply(
        st, "denoise_chunk", hs, t, a, vm, K, tc, vc),
        d["tgt_hs"], d["tgt_t"], d["tgt_action"], d["tgt_vm"], d["tgt_K"], self.tcache, self.vcache)

  def _compile(self, name, fn, *args):
    compiled, secs = timing.timed(lambda: jax.jit(fn).lower(self.state, *args).compile())
    self.compile_s[name] = round(secs, 2)
    return lambda: jax.block_until_ready(compiled(self.state, *args))


def agreement(ref: Reference, ours: Ours) -> dict:
  """max |wc_jax - reference| of every case's output (and of the context K/V cache)."""
  out = {}
  out["full"] = float(np.max(np.abs(np.asarray(ours.fns["full"]()) - ref.full().cpu().numpy())))
  ctx = ref.context()
  kv = 0.0
  for i, layer in enumerate(ctx):
    for name, ours_arr in (("k_vision", ours.vcache.k), ("v_vision", ours.vcache.v)):
      got = np.asarray(ours_arr[i, :, 0]).transpose(0, 2, 1, 3)   # [2, N, H, D] -> [2, H, N, D]
      kv = max(kv, float(np.max(np.abs(got - layer[name].cpu().numpy().reshape(got.shape)))))
  out["context"] = kv
  out["denoise"] = float(np.max(np.abs(np.asarray(ours.fns["denoise"]()) - ref.denoise(ctx).cpu().numpy())))
  out["output_absmax"] = float(np.max(np.abs(ref.full().cpu().numpy())))
  return out


CASES = {"full": "full forward", "context": "context pass", "denoise": "AR denoise step"}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reference", required=True, help="local HY-WorldPlay checkout (outside this repository)")
  p.add_argument("--torch-path", default=os.environ.get("WC_JAX_TORCH_PATH", ""),
                 help="a folder with torch (+ einops, loguru, diffusers) to append to sys.path")
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--channels", type=int, default=32)
  p.add_argument("--height", type=int, default=16)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--frames", type=int, default=4, help="latents of the full forward (x height x width tokens)")
  p.add_argument("--context", type=int, default=4, help="context latents of the context pass / AR step")
  p.add_argument("--text-dim", type=int, default=256)
  p.add_argument("--vision-dim", type=int, default=64)
  p.add_argument("--text-tokens", type=int, default=64)
  p.add_argument("--byt5-tokens", type=int, default=16)
  p.add_argument("--vision-tokens", type=int, default=16)
  p.add_argument("--impls", default="xla,xla_flash", help="wc_jax attention implementations to time")
  p.add_argument("--cases", default="full,context,denoise")
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--tiny", action="store_true", help="a toy size (the GPU suite's CPU check)")
  p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
  p.add_argument("--seed", type=int, default=1234)
  p.add_argument("--tol", type=float, default=1e-3, help="max abs difference allowed (fp32, outputs O(1))")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  if args.tiny:
    args.hidden, args.heads, args.layers, args.height, args.width = 64, 2, 1, 4, 8
    args.reps = min(args.reps, 3)
  cls = import_reference(args.reference, args.torch_path)
  import torch
  if jax.default_backend() == "gpu":   # fp32 means fp32 in both arms (torch does not use TF32 by default)
    jax.config.update("jax_default_matmul_precision", "highest")
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  ctor = constructor_kwargs(args)
  ref_model = build_reference(cls, ctor, args.seed)
  d = make_inputs(args, args.seed + 1)
  ref = Reference(ref_model, d)
  tokens = args.height * args.width
  print(f"# side by side on {jax.devices()[0].device_kind}: hidden {args.hidden}, heads {args.heads}, "
        f"{args.layers} blocks, {tokens} tokens/latent (full {args.frames * tokens}, context {args.context * tokens}, "
        f"AR chunk {4 * tokens} tokens), fp32; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"jax {jax.__version__}; load {timing.load():.2f}", flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as work:
    ours = {impl: Ours(build_ours(ref_model, ctor, impl, work), d) for impl in args.impls.split(",")}
  agree = {impl: agreement(ref, o) for impl, o in ours.items()}
  for impl, a in agree.items():
    print(f"# agreement wc_jax[{impl}] vs reference, max abs: full {a['full']:.2e}, context K/V {a['context']:.2e}, "
          f"AR step {a['denoise']:.2e} (outputs up to {a['output_absmax']:.2f})")
  ctx = ref.context()
  ref_fns = {"full": lambda: ref.sync(ref.full()), "context": lambda: ref.sync(ref.context()),
             "denoise": lambda: ref.sync(ref.denoise(ctx))}
  print("| case | arm | median ms | min ms | spread | compile s | wc_jax / reference (median) | load |")
  print("|---|---|---|---|---|---|---|---|")
  for case in args.cases.split(","):
    arms = {"reference": ref_fns[case]}
    arms.update({f"wc_jax[{impl}]": o.fns[case] for impl, o in ours.items()})
    load = timing.load()
    stats = timing.interleaved(arms, args.reps)
    base = stats["reference"]["median_ms"]
    for arm, st in stats.items():
      impl = arm[len("wc_jax["):-1] if arm != "reference" else None
      ratio = round(st["median_ms"] / base, 3)
      comp = ours[impl].compile_s[case] if impl else "-"
      print(f"| {CASES[case]} | {arm} | {st['median_ms']} | {st['min_ms']} | {st['spread']} | {comp} | "
            f"{ratio if impl else '1'} | {load:.2f} |")
      if impl:
        rows.append(dict(case=CASES[case], impl=impl, wc_jax=st, reference=stats["reference"], ratio=ratio,
                         compile_s=comp, max_abs_diff=agree[impl][case], load=load))
  bad = {impl: {k: v for k, v in a.items() if k != "output_absmax" and v > args.tol} for impl, a in agree.items()}
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(dict(args=vars(args), agreement=agree, rows=rows), f, indent=1)
  if any(bad.values()):
    raise SystemExit(f"wc_jax disagrees with the reference beyond --tol={args.tol}: {bad}")
  return rows


if __name__ == "__main__":
  main()
