"""Weight conversion for the CLIP aesthetic scorer: HF safetensors <-> wc_jax params.

Tower keys are Hugging Face `CLIPModel` / `CLIPVisionModelWithProjection`
names (`vision_model.*` and `visual_projection.weight`); text-tower keys,
`logit_scale` and the `position_ids` buffer are ignored, so a full CLIP
checkpoint works. Torch Linear weights are [out, in] (transposed for Flax), the
patch conv is [D,3,p,p] (-> [p,p,3,D]), LayerNorm weight -> scale.

Head keys are those of a LAION aesthetic predictor state dict
(`layers.0.weight`, `layers.2.weight`, ..., or `weight`/`bias` for the v1
linear probe): every 2-D `*weight` tensor is a Linear, in natural key order,
with the matching `*bias`. In a single combined file they carry the prefix
`aesthetic_head.`.

A converter like the others in `wc_jax.convert` (KIND, matches, torch_to_params,
params_to_torch, build_model, TORCH_FILENAME), plus `load_scorer` for an HF folder with
a separate head file and `random_scorer` for smoke runs.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import (ConversionError, TensorSource, match_keys, read_config,
                                   save_torch_safetensors)
from wc_jax.models.quality.clip import (AestheticHeadConfig, ClipAestheticScorer,
                                        ClipVisionConfig)

KIND = kinds.CLIP_AESTHETIC
TORCH_FILENAME = "model.safetensors"
HEAD_PREFIX = "aesthetic_head."
_IGNORED = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|vision_model\.embeddings\.position_ids$)")


def matches(config: dict) -> bool:
  return config.get("model_type") in ("clip", "clip_vision_model") or (
      "vision_config" in config and config.get("model_type", "clip") == "clip")


def _tower_map(cfg: ClipVisionConfig):
  """(hf key, param path, kind, hf shape); kind: linear (transpose), conv, copy."""
  d, p, f = cfg.hidden_size, cfg.patch_size, cfg.intermediate_size
  v = "vision_model."
  out = [
      (v + "embeddings.class_embedding", ("class_embedding",), "copy", (d,)),
      (v + "embeddings.patch_embedding.weight", ("patch_embedding", "kernel"), "conv", (d, 3, p, p)),
      (v + "embeddings.position_embedding.weight", ("position_embedding",), "copy",
       (cfg.num_positions, d)),
  ]

  def ln(hf, path):
    return [(hf + ".weight", path + ("scale",), "copy", (d,)), (hf + ".bias", path + ("bias",), "copy", (d,))]

  def lin(hf, path, n_in, n_out, bias=True):
    r = [(hf + ".weight", path + ("kernel",), "linear", (n_out, n_in))]
    return r + ([(hf + ".bias", path + ("bias",), "copy", (n_out,))] if bias else [])

  out += ln(v + "pre_layrnorm", ("pre_layrnorm",))
  for i in range(cfg.num_hidden_layers):
    hf, path = f"{v}encoder.layers.{i}.", ("layers", i)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      out += lin(hf + "self_attn." + proj, path + ("self_attn", proj), d, d)
    out += ln(hf + "layer_norm1", path + ("layer_norm1",))
    out += ln(hf + "layer_norm2", path + ("layer_norm2",))
    out += lin(hf + "mlp.fc1", path + ("mlp", "fc1"), d, f)
    out += lin(hf + "mlp.fc2", path + ("mlp", "fc2"), f, d)
  out += ln(v + "post_layernorm", ("post_layernorm",))
  out += lin("visual_projection", ("visual_projection",), d, cfg.projection_dim, bias=False)
  return out


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def head_layout(keys, shape_of) -> tuple[list[str], tuple[int, ...]]:
  """Linear-layer key prefixes of a head state dict and the dims they chain."""
  prefixes = sorted((k[:-len("weight")] for k in keys
                     if k.endswith("weight") and len(shape_of(k)) == 2), key=_natural)
  if not prefixes:
    raise ConversionError(f"aesthetic head: no 2-D '*weight' tensor among keys {sorted(keys)[:10]}")
  dims = [shape_of(prefixes[0] + "weight")[1]]
  for pre in prefixes:
    o, i = shape_of(pre + "weight")
    if i != dims[-1]:
      raise ConversionError(f"aesthetic head: {pre}weight takes {i} inputs but the previous layer "
                            f"gives {dims[-1]}")
    dims.append(o)
  return prefixes, tuple(dims)


def _set(tree: dict, path, value):
  node = tree
  for p in path[:-1]:
    node = node.setdefault(p, {})
  node[path[-1]] = value


def _get(tree, path):
  for p in path:
    tree = tree[p] if p in tree else tree[str(p)]   # Orbax restores int keys as strings
  return tree


def _to_flax(x: np.ndarray, kind: str, dtype) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":
    x = x.transpose(2, 3, 1, 0)
  return x.astype(dtype or np.float32)


def _to_torch(x, kind: str, dtype) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":
    x = x.transpose(3, 2, 0, 1)
  return np.ascontiguousarray(x.astype(dtype or np.float32))


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None,
                    head_source: TensorSource | None = None, head_activation: str = "none",
                    head_normalize_input: bool = True):
  """HF CLIP (+ aesthetic head) tensors -> (model_config, nested params).

  Args:
    source: the CLIP checkpoint; may also hold the head under `aesthetic_head.`.
    config: the checkpoint's config.json (CLIPConfig or CLIPVisionConfig).
    head_source: a separate head state dict (LAION predictor layout).
    head_activation, head_normalize_input: head options the state dict cannot tell.

  Returns:
    ({"vision": ..., "head": ...}, {"vision": {"tower": ...}, "head": {"layers": ...}}),
    the nested dict matching `nnx.to_pure_dict(nnx.state(ClipAestheticScorer(...)))`.
  """
  del mesh  # small model: replicated
  cfg = ClipVisionConfig.from_hf(config)
  table = _tower_map(cfg)
  have = set(source.keys())
  want = {k for k, *_ in table}
  missing = sorted(want - have)
  unexpected = sorted(k for k in have - want if not _IGNORED.match(k) and not k.startswith(HEAD_PREFIX))
  bad = [f"{k}: checkpoint {source.shape(k)} vs model {s}" for k, _, _, s in table
         if k in have and tuple(source.shape(k)) != s]
  if missing or unexpected or bad:
    raise ConversionError("CLIP checkpoint does not match the config:\n  " + "\n  ".join(
        x for x in (f"missing keys ({len(missing)}): {missing[:12]}" if missing else "",
                    f"unexpected keys ({len(unexpected)}): {unexpected[:12]}" if unexpected else "",
                    f"shape mismatches: {bad[:12]}" if bad else "") if x))
  tower: dict = {}
  for k, path, kind, _ in table:
    _set(tower, path, _to_flax(source.get(k), kind, dtype))

  if head_source is None:
    head_keys = [k[len(HEAD_PREFIX):] for k in have if k.startswith(HEAD_PREFIX)]
    if not head_keys:
      raise ConversionError(f"no aesthetic head: pass head_source or put the head in the "
                            f"checkpoint under {HEAD_PREFIX!r}")
    get = lambda k: source.get(HEAD_PREFIX + k)
    shape = lambda k: source.shape(HEAD_PREFIX + k)
  else:
    head_keys = head_source.keys()
    get, shape = head_source.get, head_source.shape
  prefixes, dims = head_layout(head_keys, shape)
  if dims[0] != cfg.projection_dim or dims[-1] != 1:
    raise ConversionError(f"aesthetic head maps {dims[0]} -> {dims[-1]}; need "
                          f"{cfg.projection_dim} (projection_dim) -> 1")
  head_layers = {}
  for i, pre in enumerate(prefixes):
    w = get(pre + "weight")
    b = get(pre + "bias") if (pre + "bias") in set(head_keys) else np.zeros(w.shape[0], np.float32)
    head_layers[i] = {"kernel": _to_flax(w, "linear", dtype), "bias": _to_flax(b, "copy", dtype)}
  head_cfg = AestheticHeadConfig(dims=dims, activation=head_activation,
                                 normalize_input=head_normalize_input)
  model_config = {"vision": dataclasses.asdict(cfg), "head": dataclasses.asdict(head_cfg),
                  "head_key_prefixes": prefixes}
  return model_config, {"vision": {"tower": tower}, "head": {"layers": head_layers}}


def params_to_torch(params: Mapping, model_config: dict, dtype=None, reference_config=None):
  """Nested params -> (HF config, tensors with HF CLIP keys + `aesthetic_head.` keys)."""
  cfg = ClipVisionConfig(**model_config["vision"])
  tower = params["vision"]["tower"]
  tensors = {k: _to_torch(_get(tower, path), kind, dtype) for k, path, kind, _ in _tower_map(cfg)}
  layers = params["head"]["layers"]
  prefixes = model_config.get("head_key_prefixes") or [f"layers.{i}." for i in range(len(layers))]
  for i, pre in enumerate(prefixes):
    layer = _get(layers, (i,))
    tensors[HEAD_PREFIX + pre + "weight"] = _to_torch(layer["kernel"], "linear", dtype)
    tensors[HEAD_PREFIX + pre + "bias"] = _to_torch(layer["bias"], "copy", dtype)
  ref = dict(reference_config) if reference_config else cfg.to_hf()
  return ref, tensors


def build_scorer(model_config: dict, params: Mapping, dtype=jnp.float32) -> ClipAestheticScorer:
  """Instantiates a scorer from converted params without a random init."""
  vision = ClipVisionConfig(**model_config["vision"])
  head_kw = dict(model_config["head"])
  head_kw["dims"] = tuple(head_kw["dims"])
  head = AestheticHeadConfig(**head_kw)
  abstract = nnx.eval_shape(lambda: ClipAestheticScorer(vision, head, dtype=dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(state)
  params = match_keys(params, pure)
  want = jax.tree.map(lambda x: tuple(x.shape), pure)
  got = jax.tree.map(lambda x: tuple(np.shape(x)), dict(params))
  if want != got:
    raise ConversionError("converted params do not match the scorer's structure")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
  return nnx.merge(graphdef, state)


def build_model(model_config: dict, params: Mapping, mesh=None, dtype=jnp.float32) -> ClipAestheticScorer:
  """The registry's entry point (`load_model`): the scorer is small and stays replicated."""
  del mesh
  return build_scorer(model_config, params, dtype=dtype)


def scorer_params(scorer: ClipAestheticScorer) -> dict:
  """The scorer's params as a nested numpy dict (inverse of `build_scorer`)."""
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(scorer, nnx.Param)))


def load_scorer(path, head_path=None, *, dtype=jnp.float32, head_activation: str = "none",
                head_normalize_input: bool = True) -> ClipAestheticScorer:
  """Loads a ClipAestheticScorer from an HF CLIP folder/file (+ a head safetensors file).

  Args:
    path: folder with config.json + *.safetensors (or one .safetensors file
      next to a config.json).
    head_path: the aesthetic head as safetensors (convert a LAION .pth with
      `safetensors.torch.save_file(torch.load(p), out)` once); omit if the
      head is in `path` under `aesthetic_head.`.
  """
  source = TensorSource(path)
  head = TensorSource(head_path) if head_path is not None else None
  model_config, params = torch_to_params(source, read_config(path), head_source=head,
                                         head_activation=head_activation,
                                         head_normalize_input=head_normalize_input)
  return build_scorer(model_config, params, dtype=dtype)


def save_scorer(scorer: ClipAestheticScorer, out_dir, head_key_prefixes=None):
  """Writes the scorer as one HF-layout safetensors file + config.json (head under
  `aesthetic_head.`), readable by `load_scorer`."""
  model_config = {"vision": dataclasses.asdict(scorer.vision.tower.config),
                  "head": dataclasses.asdict(scorer.head.config),
                  "head_key_prefixes": head_key_prefixes}
  ref, tensors = params_to_torch(scorer_params(scorer), model_config)
  return save_torch_safetensors(tensors, out_dir, ref, filename=TORCH_FILENAME)


def random_scorer(vision: ClipVisionConfig, head: AestheticHeadConfig, seed: int = 0,
                  scale: float = 0.2, dtype=jnp.float32) -> ClipAestheticScorer:
  """A scorer with numpy-random weights (smoke runs, tests).

  Builds the HF-layout tensors with numpy and converts them, which avoids the
  per-shape initialiser compilations of a Flax random init (seconds on CPU).
  """
  rng = np.random.default_rng(seed)
  tensors = {}
  for k, _, _, shape in _tower_map(vision):
    x = rng.standard_normal(shape).astype(np.float32) * scale
    if re.search(r"(layrnorm|layernorm|layer_norm\d)\.weight$", k):
      x = 1.0 + x
    tensors[k] = x
  for i, (a, b) in enumerate(zip(head.dims[:-1], head.dims[1:])):
    tensors[f"{HEAD_PREFIX}layers.{i}.weight"] = rng.standard_normal((b, a)).astype(np.float32) * scale
    tensors[f"{HEAD_PREFIX}layers.{i}.bias"] = rng.standard_normal((b,)).astype(np.float32) * scale

  class _Dict:
    def keys(self):
      return list(tensors)

    def shape(self, k):
      return tensors[k].shape

    def get(self, k):
      return tensors[k]

  model_config, params = torch_to_params(_Dict(), vision.to_hf(), head_activation=head.activation,
                                         head_normalize_input=head.normalize_input)
  return build_scorer(model_config, params, dtype=dtype)
