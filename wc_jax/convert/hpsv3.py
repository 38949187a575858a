"""HPSv3 (Qwen2-VL-7B + reward head): reference state dict <-> wc_jax parameters.

Reference layout (transformers < 4.52, what `HPSv3.safetensors` holds): `visual.*`
(patch_embed.proj, blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2},
merger.{ln_q,mlp.0,mlp.2}), `model.*` (embed_tokens, layers.N.*, norm), `lm_head.weight`
(present, unused by the reward: checked, never read) and `rm_head.{0,3,5}`. Qwen2.5-VL
vision blocks (`mlp.{gate,up,down}_proj`, RMSNorm without bias) map the same way.

Linear weights [out, in] -> kernels [in, out]; the Conv3d patch embedding [E,3,2,14,14]
-> a kernel [1176, E]; per-layer tensors are stacked on a leading layer axis (the
nnx.scan layout). Tensors are read one at a time (at most one stacked parameter's
layers are held besides the result).

Config: the fixture's config.json (`qwen2vl_config` + `reward_model_ctor`) or a
Qwen2-VL-7B-Instruct config.json beside `HPSv3.safetensors`. The vocabulary size and the
head widths are read from the checkpoint (HPSv3 resizes the vocabulary to 151658).
"""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, TensorSource, check_keys, flatten, unflatten
from wc_jax.models.qwen2vl import hpsv3 as hpsv3_model
from wc_jax.models.qwen2vl.hpsv3 import HPSv3Config, HPSv3Model
from wc_jax.models.qwen2vl.language import Qwen2LMConfig
from wc_jax.models.qwen2vl.vision import VisionConfig
from wc_jax.sharding import logical_axes_of, named_sharding

KIND = kinds.HPSV3
TORCH_FILENAME = "HPSv3.safetensors"
STRIP_PREFIX = None
UNUSED_KEYS = ("lm_head.weight",)   # in the checkpoint, not needed for the reward

_LINEAR = [("weight", "kernel", "t"), ("bias", "bias", "id")]
_LINEAR_NB = [("weight", "kernel", "t")]
_NORM = [("weight", "weight", "id"), ("bias", "bias", "id")]
_RMS = [("weight", "weight", "id")]


def matches(config: dict) -> bool:
  """The fixture layout, or a Qwen2-VL config.json (HPSv3 ships Qwen2-VL-7B-Instruct's config beside
  HPSv3.safetensors; a plain Qwen2-VL checkpoint then fails check_keys naming the missing rm_head.*)."""
  if "reward_model_ctor" in config and "qwen2vl_config" in config:
    return "hpsv3" in str(config["reward_model_ctor"].get("class", "")).lower()
  return config.get("model_type") == "qwen2_vl"


def _vision_norm(vcfg: VisionConfig):
  return _RMS if vcfg.variant == "qwen2_5_vl" else _NORM


def _entries(cfg: HPSv3Config) -> Iterator[tuple[str, str, str, int | None, int | None]]:
  """(torch key, wc_jax path, layout, layer index or None, number of stacked layers)."""
  v, t = cfg.vision, cfg.text
  yield "visual.patch_embed.proj.weight", "visual/patch_embed/kernel", "patch", None, None
  block = [("norm1", "norm1", _vision_norm(v)), ("norm2", "norm2", _vision_norm(v)),
           ("attn.qkv", "attn/qkv", _LINEAR), ("attn.proj", "attn/proj", _LINEAR)]
  if v.variant == "qwen2_5_vl":
    block += [(f"mlp.{n}", f"mlp/{n}", _LINEAR) for n in ("gate_proj", "up_proj", "down_proj")]
  else:
    block += [("mlp.fc1", "mlp/fc1", _LINEAR), ("mlp.fc2", "mlp/fc2", _LINEAR)]
  for i in range(v.depth):
    for tk, ours, leaves in block:
      for ts, ol, lay in leaves:
        yield f"visual.blocks.{i}.{tk}.{ts}", f"visual/blocks/{ours}/{ol}", lay, i, v.depth
  for ts, ol, lay in _vision_norm(v):
    yield f"visual.merger.ln_q.{ts}", f"visual/merger/ln_q/{ol}", lay, None, None
  for n in ("0", "2"):
    for ts, ol, lay in _LINEAR:
      yield f"visual.merger.mlp.{n}.{ts}", f"visual/merger/mlp_{n}/{ol}", lay, None, None
  yield from language_entries(t)
  for j, n in enumerate(_head_indices(cfg)):
    for ts, ol, lay in _LINEAR:
      yield f"rm_head.{n}.{ts}", f"rm_head/layers/{j}/{ol}", lay, None, None


def language_entries(t: Qwen2LMConfig, prefix: str = "model.", path: str = "model/"
                     ) -> Iterator[tuple[str, str, str, int | None, int | None]]:
  """(torch key, wc_jax param path, layout, layer, depth) of a Qwen2 language model (`Qwen2LanguageModel`).

  layout: "t" = Linear weight [out, in] -> kernel [in, out]; "id" = as is. Per-layer tensors
  (layer is not None) stack on a leading axis of size depth. Reusable by any Qwen2 / Qwen2-VL /
  Qwen2.5-VL text checkpoint (prefix "model." in transformers < 4.52, "model.language_model." after).
  """
  yield f"{prefix}embed_tokens.weight", f"{path}embed_tokens/embedding", "id", None, None
  layer = [("input_layernorm", "input_layernorm", _RMS), ("post_attention_layernorm", "post_attention_layernorm", _RMS),
           ("self_attn.q_proj", "self_attn/q_proj", _LINEAR), ("self_attn.k_proj", "self_attn/k_proj", _LINEAR),
           ("self_attn.v_proj", "self_attn/v_proj", _LINEAR), ("self_attn.o_proj", "self_attn/o_proj", _LINEAR_NB),
           ("mlp.gate_proj", "mlp/gate_proj", _LINEAR_NB), ("mlp.up_proj", "mlp/up_proj", _LINEAR_NB),
           ("mlp.down_proj", "mlp/down_proj", _LINEAR_NB)]
  for i in range(t.num_hidden_layers):
    for tk, ours, leaves in layer:
      for ts, ol, lay in leaves:
        yield f"{prefix}layers.{i}.{tk}.{ts}", f"{path}layers/{ours}/{ol}", lay, i, t.num_hidden_layers
  yield f"{prefix}norm.weight", f"{path}norm/weight", "id", None, None


def _head_indices(cfg: HPSv3Config) -> list[int]:
  """torch Sequential indices of the head's Linear layers: Linear, ReLU, Dropout, then (Linear, ReLU)* ."""
  n = len(cfg.head_hidden) + 1
  return [0] + [3 + 2 * k for k in range(n - 1)]


def expected_torch_shapes(cfg: HPSv3Config) -> dict[str, tuple[int, ...]]:
  """Every reference key with its shape (lm_head included), from the config alone."""
  v, t = cfg.vision, cfg.text
  e, f, c = v.embed_dim, v.intermediate_size, t.hidden_size
  hd = t.head_dim
  out: dict[str, tuple[int, ...]] = {
      "visual.patch_embed.proj.weight": (e, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)}
  for i in range(v.depth):
    b = f"visual.blocks.{i}."
    for n in ("norm1", "norm2"):
      out[b + n + ".weight"] = (e,)
      if v.variant == "qwen2_vl":
        out[b + n + ".bias"] = (e,)
    out[b + "attn.qkv.weight"], out[b + "attn.qkv.bias"] = (3 * e, e), (3 * e,)
    out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = (e, e), (e,)
    if v.variant == "qwen2_5_vl":
      for n, shp in (("gate_proj", (f, e)), ("up_proj", (f, e)), ("down_proj", (e, f))):
        out[b + f"mlp.{n}.weight"], out[b + f"mlp.{n}.bias"] = shp, (shp[0],)
    else:
      out[b + "mlp.fc1.weight"], out[b + "mlp.fc1.bias"] = (f, e), (f,)
      out[b + "mlp.fc2.weight"], out[b + "mlp.fc2.bias"] = (e, f), (e,)
  out["visual.merger.ln_q.weight"] = (e,)
  if v.variant == "qwen2_vl":
    out["visual.merger.ln_q.bias"] = (e,)
  m = e * v.merge_unit
  out["visual.merger.mlp.0.weight"], out["visual.merger.mlp.0.bias"] = (m, m), (m,)
  out["visual.merger.mlp.2.weight"], out["visual.merger.mlp.2.bias"] = (v.out_hidden_size, m), (v.out_hidden_size,)
  out["model.embed_tokens.weight"] = (t.vocab_size, c)
  qo, kvo = t.num_attention_heads * hd, t.num_key_value_heads * hd
  for i in range(t.num_hidden_layers):
    b = f"model.layers.{i}."
    out[b + "input_layernorm.weight"] = out[b + "post_attention_layernorm.weight"] = (c,)
    out[b + "self_attn.q_proj.weight"], out[b + "self_attn.q_proj.bias"] = (qo, c), (qo,)
    out[b + "self_attn.k_proj.weight"], out[b + "self_attn.k_proj.bias"] = (kvo, c), (kvo,)
    out[b + "self_attn.v_proj.weight"], out[b + "self_attn.v_proj.bias"] = (kvo, c), (kvo,)
    out[b + "self_attn.o_proj.weight"] = (c, qo)
    out[b + "mlp.gate_proj.weight"] = out[b + "mlp.up_proj.weight"] = (t.intermediate_size, c)
    out[b + "mlp.down_proj.weight"] = (c, t.intermediate_size)
  out["model.norm.weight"] = (c,)
  out["lm_head.weight"] = (t.vocab_size, c)
  widths = (c, *cfg.head_hidden, cfg.output_dim)
  for j, n in enumerate(_head_indices(cfg)):
    out[f"rm_head.{n}.weight"], out[f"rm_head.{n}.bias"] = (widths[j + 1], widths[j]), (widths[j + 1],)
  return out


def config_from_reference(config: Mapping, source: TensorSource | None = None, **overrides) -> HPSv3Config:
  """HPSv3Config from the fixture's config.json or a Qwen2-VL config.json (+ the checkpoint's shapes)."""
  ctor = dict(config.get("reward_model_ctor") or {})
  q = dict(config.get("qwen2vl_config") or config)
  if q.get("model_type", "qwen2_vl") not in ("qwen2_vl", "qwen2_5_vl"):
    raise ConversionError(f"HPSv3 needs a Qwen2-VL config, got model_type {q.get('model_type')!r}")
  if ctor.get("rm_head_kwargs") not in (None, {}):
    raise ConversionError(f"HPSv3: rm_head_kwargs {ctor['rm_head_kwargs']} is not supported (only the default head)")
  text_kw = {}
  head_hidden, output_dim = (1024, 16), int(ctor.get("output_dim", 2))
  if source is not None:
    if "model.embed_tokens.weight" not in source:
      raise ConversionError("HPSv3 checkpoint has no model.embed_tokens.weight")
    text_kw["vocab_size"] = int(source.shape("model.embed_tokens.weight")[0])
    heads = sorted((int(k.split(".")[1]) for k in source.keys() if k.startswith("rm_head.") and k.endswith(".weight")))
    if heads:
      dims = [source.shape(f"rm_head.{n}.weight")[0] for n in heads]
      head_hidden, output_dim = tuple(int(d) for d in dims[:-1]), int(dims[-1])
  text = Qwen2LMConfig.from_hf(q, **text_kw)
  vision = VisionConfig.from_hf(q)
  special = ctor.get("special_token_ids(tiny ids)") or ctor.get("special_token_ids") or [hpsv3_model.REWARD_ID]
  cfg = HPSv3Config(text=text, vision=vision, image_token_id=int(q.get("image_token_id", hpsv3_model.IMAGE_PAD_ID)),
                    reward_token_id=int(special[0]),
                    pad_token_id=int(q.get("pad_token_id") or hpsv3_model.PAD_ID),
                    head_hidden=head_hidden, output_dim=output_dim)
  return cfg.with_execution(**overrides) if overrides else cfg


def _to_ours(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(x.T)
  if layout == "patch":
    return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
  return x


to_wc_layout = _to_ours   # public: torch tensor -> wc_jax leaf for a layout of `language_entries`


def _to_torch(x: np.ndarray, layout: str, shape) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(np.asarray(x).T)
  if layout == "patch":
    return np.ascontiguousarray(np.asarray(x).T.reshape(shape))
  return np.asarray(x)


def abstract_model(cfg: HPSv3Config) -> HPSv3Model:
  """The model with ShapeDtypeStruct leaves (nothing allocated)."""
  return nnx.eval_shape(lambda: HPSv3Model(cfg, rngs=nnx.Rngs(0)))


def _logical_axes(cfg: HPSv3Config) -> dict[str, tuple]:
  state = nnx.state(abstract_model(cfg), nnx.Param)
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    out["/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = logical_axes_of(var)
  return out


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None):
  """Streams the checkpoint tensor by tensor into wc_jax params (named errors on any mismatch)."""
  cfg = config_from_reference(config, source)
  check_keys(expected_torch_shapes(cfg), source, "HPSv3")
  axes = _logical_axes(cfg) if mesh is not None else {}
  place = (lambda x, p: jax.device_put(x, named_sharding(mesh, axes.get(p)))) if mesh is not None else (lambda x, p: x)
  head_paths = {p for k, p, *_ in _entries(cfg) if k.startswith("rm_head.")}

  def cast(x, path):
    if path in head_paths:          # the reference keeps the head in float32
      return x.astype(np.float32)
    return x.astype(jnp.dtype(dtype)) if dtype else x

  flat: dict[str, object] = {}
  stacked: dict[str, list] = {}
  for tkey, path, layout, layer, depth in _entries(cfg):
    x = cast(_to_ours(source.get(tkey), layout), path)
    if layer is None:
      flat[path] = place(x, path)
    else:
      stacked.setdefault(path, [None] * depth)[layer] = x
      if all(s is not None for s in stacked[path]):
        flat[path] = place(np.stack(stacked.pop(path)), path)
  model_config = cfg.to_dict()
  if dtype:
    model_config = cfg.with_execution(param_dtype=str(jnp.dtype(dtype))).to_dict()
  return model_config, unflatten(flat)


def params_to_torch(params, model_config: dict, dtype=None, reference_config=None):
  """wc_jax params -> reference tensors (lm_head is not kept by wc_jax: written as zeros)."""
  cfg = HPSv3Config.from_dict(model_config)
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  shapes = expected_torch_shapes(cfg)
  tensors = {}
  for tkey, path, layout, layer, _ in _entries(cfg):
    if path not in flat:
      raise ConversionError(f"parameter {path} missing from the wc_jax checkpoint")
    x = flat[path] if layer is None else flat[path][layer]
    x = _to_torch(x, layout, shapes[tkey])
    tensors[tkey] = x.astype(jnp.dtype(dtype)) if dtype and not tkey.startswith("rm_head.") else x
  tensors["lm_head.weight"] = np.zeros(shapes["lm_head.weight"], tensors["model.embed_tokens.weight"].dtype)
  return dict(reference_config or {}), tensors


def build_model(model_config: Mapping, params: Mapping, mesh=None, **overrides) -> HPSv3Model:
  """The module holding `params`, built without a random init; `overrides` set execution fields
  (dtype, attention_impl, remat_policy) on both towers."""
  del mesh
  cfg = HPSv3Config.from_dict(model_config)
  if overrides:
    cfg = cfg.with_execution(**overrides)
  model = abstract_model(cfg)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  want = {k: v for k, v in flatten(pure).items()}
  got = {k: v for k, v in flatten(params).items()}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise ConversionError(f"HPSv3 parameter tree does not match the model: missing {missing[:10]}, "
                          f"unexpected {extra[:10]}")
  bad = [f"{k}: model {tuple(want[k].shape)} vs given {tuple(np.shape(got[k]))}" for k in want
         if tuple(want[k].shape) != tuple(np.shape(got[k]))]
  if bad:
    raise ConversionError(f"HPSv3 parameter shapes do not match the model: {bad[:10]}")
  new = unflatten({k: jnp.asarray(got[k], dtype=want[k].dtype) for k in want})
  nnx.replace_by_pure_dict(state, _int_keys(new, pure))
  nnx.update(model, state)
  return model


def _int_keys(tree, like):
  """Spell dict keys as in `like` (nnx.List entries have int keys; flattened paths are strings)."""
  if not isinstance(tree, Mapping):
    return tree
  spelled = {str(k): k for k in like}
  return {spelled[str(k)]: _int_keys(v, like[spelled[str(k)]]) for k, v in tree.items()}


def load_fixture_model(path, **overrides) -> HPSv3Model:
  """The model of a fixture / reference folder (config.json + weights.safetensors)."""
  import json
  import pathlib
  path = pathlib.Path(path)
  with open(path / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  model_config, params = torch_to_params(TensorSource(path), config)
  return build_model(model_config, params, **overrides)
