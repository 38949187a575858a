"""Weight conversion for the conditioning encoders: reference key layouts <-> wc_jax params.

Four converters, one per model kind (each an object with the registry's interface:
KIND, matches, torch_to_params, params_to_torch, build_model, TORCH_FILENAME, expected_keys):

* `byt5`          T5 encoder stack. Accepted key layouts: the Glyph-SDXL-v2 `byt5_model.pt`
                  state dict after stripping `module.text_tower.encoder.` (what WorldPlay loads),
                  the same with the prefix, or an HF T5 checkpoint (`encoder.*` + `shared.weight`;
                  decoder / lm_head keys are ignored). The vocabulary size is read from the
                  embedding (Glyph-SDXL-v2 adds colour/font tokens to byt5-small's 384).
* `siglip`        `SiglipVisionModel` keys (`vision_model.*`, as FLUX.1-Redux `image_encoder`);
                  the text tower of a full SigLIP checkpoint is ignored.
* `qwen25vl_text` the Qwen2.5-VL language model: checkpoint keys `model.*` (older files) or
                  `model.language_model.*` (transformers >= 4.52 saves), or bare `layers.*`;
                  `visual.*` and `lm_head.*` are ignored (the reference uses the decoder only).
* `umt5`          LingBot-World's / Wan's umT5-XXL encoder: the state dict of Wan's `T5Encoder`
                  (`models_t5_umt5-xxl-enc-bf16.pth`: token_embedding, blocks.{i}.{norm1, attn.q/k/v/o,
                  norm2, ffn.gate.0/fc1/fc2, pos_embedding.embedding}, norm); `load_umt5` and
                  `load_umt5_tokenizer` read the release's files (the .pth without torch too:
                  `torch_files.TorchZipSource`); `python -m wc_jax.convert --from-torch FILE --kind=umt5`
                  (`convert_umt5`) writes a wc_jax folder.

Torch Linear weights are [out, in] (transposed here), the SigLIP patch conv is [D, 3, p, p].
Every mismatch is reported at once as a ConversionError naming the keys.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert.torch_files import TorchZipSource, open_state_dict  # noqa: F401  (TorchZipSource: re-export)
from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, match_keys


class ByT5KeyError(ConversionError):
  """A ByT5 checkpoint does not match the T5 encoder it is converted for."""


class SiglipKeyError(ConversionError):
  """A SigLIP checkpoint does not match the vision tower it is converted for."""


class QwenTextKeyError(ConversionError):
  """A Qwen2.5-VL checkpoint does not match the language model it is converted for."""


# ----------------------------------------------------------------------------- shared machinery

@dataclasses.dataclass(frozen=True)
class Entry:
  """One reference tensor: key (with `{i}` for a stacked layer), param path, transform, shape."""
  key: str
  path: tuple
  kind: str            # copy | linear (transpose) | conv (OIHW -> HWIO)
  shape: tuple
  stacked: bool = False


def _to_flax(x, kind: str, dtype) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype not in (np.float32, np.float64):
    x = x.astype(np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":
    x = x.transpose(2, 3, 1, 0)
  return np.ascontiguousarray(x.astype(dtype or np.float32))


def _to_torch(x, kind: str, dtype) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if kind == "linear":
    x = x.T
  elif kind == "conv":
    x = x.transpose(3, 2, 0, 1)
  return np.ascontiguousarray(x.astype(dtype or np.float32))


def expand(table: list[Entry], n_layers: int) -> dict[str, tuple[int, ...]]:
  """Every reference key -> shape the table expects."""
  out = {}
  for e in table:
    if e.stacked:
      for i in range(n_layers):
        out[e.key.format(i=i)] = tuple(e.shape)
    else:
      out[e.key] = tuple(e.shape)
  return out


def _check(expected: Mapping[str, tuple], have: Mapping[str, tuple], error: type, what: str,
           ignored: Callable[[str], bool] = lambda k: False) -> None:
  missing = sorted(set(expected) - set(have))
  unexpected = sorted(k for k in set(have) - set(expected) if not ignored(k))
  bad = [f"{k}: checkpoint {tuple(have[k])} vs model {tuple(expected[k])}"
         for k in sorted(set(expected) & set(have)) if tuple(have[k]) != tuple(expected[k])]
  if missing or unexpected or bad:
    parts = []
    if missing:
      parts.append(f"missing keys ({len(missing)}): {missing[:16]}{' ...' if len(missing) > 16 else ''}")
    if unexpected:
      parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:16]}{' ...' if len(unexpected) > 16 else ''}")
    if bad:
      parts.append(f"shape mismatches ({len(bad)}): {bad[:16]}")
    raise error(f"{what} checkpoint does not match the model:\n  " + "\n  ".join(parts))


def _set(tree: dict, path, value):
  node = tree
  for p in path[:-1]:
    node = node.setdefault(p, {})
  node[path[-1]] = value


def _get(tree, path):
  for p in path:
    tree = tree[p] if p in tree else tree[str(p)]
  return tree


class _Prefixed:
  """A TensorSource seen through a key map (reference name -> stored name)."""

  def __init__(self, source, names: Mapping[str, str]):
    self.source, self.names = source, dict(names)

  def keys(self):
    return list(self.names)

  def shape(self, k):
    return tuple(self.source.shape(self.names[k]))

  def get(self, k):
    return self.source.get(self.names[k])


def _read(source, table: list[Entry], n_layers: int, dtype) -> dict:
  """Nested params; stacked entries are read layer by layer into one preallocated array."""
  params: dict = {}
  for e in table:
    if e.stacked:
      first = _to_flax(source.get(e.key.format(i=0)), e.kind, dtype)
      buf = np.empty((n_layers,) + first.shape, first.dtype)
      buf[0] = first
      for i in range(1, n_layers):
        buf[i] = _to_flax(source.get(e.key.format(i=i)), e.kind, dtype)
      _set(params, e.path, buf)
    else:
      _set(params, e.path, _to_flax(source.get(e.key), e.kind, dtype))
  return params


def _write(params, table: list[Entry], n_layers: int, dtype) -> dict[str, np.ndarray]:
  out = {}
  for e in table:
    x = np.asarray(_get(params, e.path))
    if e.stacked:
      for i in range(n_layers):
        out[e.key.format(i=i)] = _to_torch(x[i], e.kind, dtype)
    else:
      out[e.key] = _to_torch(x, e.kind, dtype)
  return out


def _build(make: Callable[[], nnx.Module], params: Mapping, error: type, what: str, mesh=None):
  """The module from converted params without a random init (sharded on `mesh` if given)."""
  abstract = nnx.eval_shape(make)
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(state)
  params = match_keys(params, pure)
  want = jax.tree.map(lambda x: tuple(x.shape), pure)
  got = jax.tree.map(lambda x: tuple(np.shape(x)), dict(params))
  if want != got:
    raise error(f"converted {what} params do not match the model's structure:\n  model {want}\n  params {got}")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
  if mesh is not None:
    from wc_jax.sharding import state_shardings
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.device_put, nnx.to_pure_dict(state), shardings))
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- ByT5 (T5 encoder)

BYT5_PREFIXES = ("module.text_tower.encoder.", "text_tower.encoder.", "encoder.")
_BYT5_IGNORED = re.compile(r"^(decoder\.|lm_head\.|shared\.weight$|encoder\.embed_tokens\.weight$)")


def t5_table(cfg) -> list[Entry]:
  d, inner, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
  b = "block.{i}.layer."
  t = [Entry("embed_tokens.weight", ("embed_tokens",), "copy", (cfg.vocab_size, d)),
       Entry("block.0.layer.0.SelfAttention.relative_attention_bias.weight", ("relative_attention_bias",), "copy",
             (cfg.relative_attention_num_buckets, cfg.num_heads))]
  for n in ("q", "k", "v"):
    t.append(Entry(b + f"0.SelfAttention.{n}.weight", ("blocks", n, "kernel"), "linear", (inner, d), True))
  t.append(Entry(b + "0.SelfAttention.o.weight", ("blocks", "o", "kernel"), "linear", (d, inner), True))
  t.append(Entry(b + "0.layer_norm.weight", ("blocks", "attn_norm", "weight"), "copy", (d,), True))
  if cfg.is_gated:
    t.append(Entry(b + "1.DenseReluDense.wi_0.weight", ("blocks", "wi_0", "kernel"), "linear", (f, d), True))
    t.append(Entry(b + "1.DenseReluDense.wi_1.weight", ("blocks", "wi_1", "kernel"), "linear", (f, d), True))
  else:
    t.append(Entry(b + "1.DenseReluDense.wi.weight", ("blocks", "wi_0", "kernel"), "linear", (f, d), True))
  t.append(Entry(b + "1.DenseReluDense.wo.weight", ("blocks", "wo", "kernel"), "linear", (d, f), True))
  t.append(Entry(b + "1.layer_norm.weight", ("blocks", "ffn_norm", "weight"), "copy", (d,), True))
  t.append(Entry("final_layer_norm.weight", ("final_layer_norm", "weight"), "copy", (d,)))
  return t


def _byt5_names(source) -> dict[str, str]:
  """T5Stack key -> stored key, whichever of the accepted layouts `source` uses."""
  keys = list(source.keys())
  for pre in BYT5_PREFIXES:
    if any(k.startswith(pre + "block.") for k in keys):
      names = {k[len(pre):]: k for k in keys if k.startswith(pre)}
      break
  else:
    names = {k: k for k in keys}
  if "embed_tokens.weight" not in names:
    for alt in ("shared.weight", "encoder.embed_tokens.weight"):
      if alt in keys:
        names["embed_tokens.weight"] = alt
        break
  for k in keys:   # keep the foreign keys visible for the unexpected-key report
    if k not in names.values() and not _BYT5_IGNORED.match(k):
      names.setdefault(k, k)
  return names


class _ByT5Converter:
  KIND = kinds.BYT5
  TORCH_FILENAME = "byt5_model.safetensors"
  STRIP_PREFIX = None
  Error = ByT5KeyError

  @staticmethod
  def matches(config: dict) -> bool:
    return config.get("model_type") in ("t5", "byt5") or "T5" in str(config.get("architectures", ""))

  @staticmethod
  def model_config(config: dict, vocab_size: int | None = None, dtype=None):
    from wc_jax.models.encoders.t5 import T5Config
    over = {"vocab_size": vocab_size} if vocab_size else {}
    cfg = T5Config.from_hf(config, **over)
    if dtype is not None:
      cfg = dataclasses.replace(cfg, param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    return cfg

  def expected_keys(self, config: dict, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Reference key -> shape for `config` (no weights needed)."""
    cfg = self.model_config(config, vocab_size)
    return expand(t5_table(cfg), cfg.num_layers)

  def torch_to_params(self, source, config: dict, dtype=None, mesh=None):
    del mesh
    view = _Prefixed(source, _byt5_names(source))
    if "embed_tokens.weight" not in view.keys():
      raise ByT5KeyError(f"ByT5 checkpoint has no embedding (embed_tokens.weight / shared.weight); "
                         f"keys: {sorted(source.keys())[:12]}")
    vocab = view.shape("embed_tokens.weight")[0]
    cfg = self.model_config(config, vocab, dtype)
    table = t5_table(cfg)
    _check(expand(table, cfg.num_layers), {k: view.shape(k) for k in view.keys()}, ByT5KeyError, "ByT5")
    return dataclasses.asdict(cfg), _read(view, table, cfg.num_layers, jnp.dtype(cfg.param_dtype))

  def params_to_torch(self, params, model_config: dict, dtype=None, reference_config=None):
    from wc_jax.models.encoders.t5 import T5Config
    cfg = T5Config(**model_config)
    ref = dict(reference_config) if reference_config else {
        "model_type": "t5", **{k: v for k, v in model_config.items() if k not in ("dtype", "param_dtype", "remat")}}
    return ref, _write(params, t5_table(cfg), cfg.num_layers, dtype)

  def build_model(self, model_config: dict, params, mesh=None, **overrides):
    from wc_jax.models.encoders.t5 import T5Config, T5Encoder
    cfg = T5Config(**{**model_config, **overrides})
    return _build(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)), params, ByT5KeyError, "ByT5", mesh)


byt5 = _ByT5Converter()


# ----------------------------------------------------------------------------- SigLIP vision tower

_SIGLIP_IGNORED = re.compile(r"^(text_model\.|logit_scale$|logit_bias$|vision_model\.embeddings\.position_ids$)")


def siglip_table(cfg) -> list[Entry]:
  d, f, p, c = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size, cfg.num_channels
  v = "vision_model."
  t = [Entry(v + "embeddings.patch_embedding.weight", ("patch_kernel",), "conv", (d, c, p, p)),
       Entry(v + "embeddings.patch_embedding.bias", ("patch_bias",), "copy", (d,)),
       Entry(v + "embeddings.position_embedding.weight", ("position_embedding",), "copy", (cfg.num_patches, d))]

  def ln(key, path, stacked=False):
    return [Entry(key + ".weight", path + ("weight",), "copy", (d,), stacked),
            Entry(key + ".bias", path + ("bias",), "copy", (d,), stacked)]

  def lin(key, path, n_in, n_out, stacked=False):
    return [Entry(key + ".weight", path + ("kernel",), "linear", (n_out, n_in), stacked),
            Entry(key + ".bias", path + ("bias",), "copy", (n_out,), stacked)]

  layer = v + "encoder.layers.{i}."
  L = ("layers",)
  t += ln(layer + "layer_norm1", L + ("layer_norm1",), True)
  for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
    t += lin(layer + "self_attn." + proj, L + ("self_attn", proj), d, d, True)
  t += ln(layer + "layer_norm2", L + ("layer_norm2",), True)
  t += lin(layer + "mlp.fc1", L + ("mlp", "fc1"), d, f, True)
  t += lin(layer + "mlp.fc2", L + ("mlp", "fc2"), f, d, True)
  t += ln(v + "post_layernorm", ("post_layernorm",))
  if cfg.vision_use_head:
    h = v + "head."
    t.append(Entry(h + "probe", ("head", "probe"), "copy", (1, 1, d)))
    t.append(Entry(h + "attention.in_proj_weight", ("head", "in_proj", "kernel"), "linear", (3 * d, d)))
    t.append(Entry(h + "attention.in_proj_bias", ("head", "in_proj", "bias"), "copy", (3 * d,)))
    t += lin(h + "attention.out_proj", ("head", "out_proj"), d, d)
    t += ln(h + "layernorm", ("head", "layernorm"))
    t += lin(h + "mlp.fc1", ("head", "mlp", "fc1"), d, f)
    t += lin(h + "mlp.fc2", ("head", "mlp", "fc2"), f, d)
  return t


class _SiglipConverter:
  KIND = kinds.SIGLIP
  TORCH_FILENAME = "model.safetensors"
  STRIP_PREFIX = None
  Error = SiglipKeyError

  @staticmethod
  def matches(config: dict) -> bool:
    return config.get("model_type") in ("siglip_vision_model", "siglip") or "SiglipVision" in str(
        config.get("architectures", ""))

  @staticmethod
  def model_config(config: dict, dtype=None, **overrides):
    from wc_jax.models.encoders.siglip import SiglipConfig
    cfg = SiglipConfig.from_hf(config, **overrides)
    if dtype is not None:
      cfg = dataclasses.replace(cfg, param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    return cfg

  def expected_keys(self, config: dict) -> dict[str, tuple[int, ...]]:
    cfg = self.model_config(config)
    return expand(siglip_table(cfg), cfg.num_hidden_layers)

  def torch_to_params(self, source, config: dict, dtype=None, mesh=None):
    del mesh
    keys = set(source.keys())
    # a checkpoint without the pooling head (vision_use_head False / stripped) still converts
    use_head = any(k.startswith("vision_model.head.") for k in keys)
    cfg = self.model_config(config, dtype, vision_use_head=use_head)
    table = siglip_table(cfg)
    _check(expand(table, cfg.num_hidden_layers), {k: source.shape(k) for k in keys}, SiglipKeyError, "SigLIP",
           ignored=lambda k: bool(_SIGLIP_IGNORED.match(k)))
    return dataclasses.asdict(cfg), _read(source, table, cfg.num_hidden_layers, jnp.dtype(cfg.param_dtype))

  def params_to_torch(self, params, model_config: dict, dtype=None, reference_config=None):
    from wc_jax.models.encoders.siglip import SiglipConfig
    cfg = SiglipConfig(**model_config)
    skip = ("dtype", "param_dtype", "remat", "attention_impl")
    ref = dict(reference_config) if reference_config else {
        "model_type": "siglip_vision_model", **{k: v for k, v in model_config.items() if k not in skip}}
    return ref, _write(params, siglip_table(cfg), cfg.num_hidden_layers, dtype)

  def build_model(self, model_config: dict, params, mesh=None, **overrides):
    from wc_jax.models.encoders.siglip import SiglipConfig, SiglipVisionTower
    cfg = SiglipConfig(**{**model_config, **overrides})
    return _build(lambda: SiglipVisionTower(cfg, rngs=nnx.Rngs(0)), params, SiglipKeyError, "SigLIP", mesh)


siglip = _SiglipConverter()


# ----------------------------------------------------------------------------- Qwen2.5-VL text path

QWEN_LM_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.", "")
_QWEN_IGNORED = re.compile(r"^(visual\.|model\.visual\.|lm_head\.|model\.lm_head\.)")


def qwen_lm_table(lm, prefix: str = "") -> list[Entry]:
  """Keys of the decoder `lm` (a Qwen2LMConfig) under `prefix`."""
  c, f, hd = lm.hidden_size, lm.intermediate_size, lm.head_dim
  q, kv = lm.num_attention_heads * hd, lm.num_key_value_heads * hd
  layer = prefix + "layers.{i}."
  L = ("lm", "layers")
  t = [Entry(prefix + "embed_tokens.weight", ("lm", "embed_tokens", "embedding"), "copy", (lm.vocab_size, c))]
  for name, n_out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
    t.append(Entry(layer + f"self_attn.{name}.weight", L + ("self_attn", name, "kernel"), "linear", (n_out, c), True))
    t.append(Entry(layer + f"self_attn.{name}.bias", L + ("self_attn", name, "bias"), "copy", (n_out,), True))
  t.append(Entry(layer + "self_attn.o_proj.weight", L + ("self_attn", "o_proj", "kernel"), "linear", (c, q), True))
  t.append(Entry(layer + "mlp.gate_proj.weight", L + ("mlp", "gate_proj", "kernel"), "linear", (f, c), True))
  t.append(Entry(layer + "mlp.up_proj.weight", L + ("mlp", "up_proj", "kernel"), "linear", (f, c), True))
  t.append(Entry(layer + "mlp.down_proj.weight", L + ("mlp", "down_proj", "kernel"), "linear", (c, f), True))
  t.append(Entry(layer + "input_layernorm.weight", L + ("input_layernorm", "weight"), "copy", (c,), True))
  t.append(Entry(layer + "post_attention_layernorm.weight", L + ("post_attention_layernorm", "weight"), "copy",
                 (c,), True))
  t.append(Entry(prefix + "norm.weight", ("lm", "norm", "weight"), "copy", (c,)))
  return t


def _qwen_prefix(keys) -> str:
  for pre in QWEN_LM_PREFIXES:
    if any(k.startswith(pre + "layers.0.") for k in keys):
      return pre
  raise QwenTextKeyError(f"no Qwen2 decoder layers (…layers.0.self_attn…) among the checkpoint keys "
                         f"{sorted(keys)[:12]}")


class _QwenTextConverter:
  KIND = kinds.QWEN25VL_TEXT
  TORCH_FILENAME = "model.safetensors"
  STRIP_PREFIX = None
  Error = QwenTextKeyError

  @staticmethod
  def matches(config: dict) -> bool:
    return config.get("model_type") in ("qwen2_5_vl", "qwen2_5_vl_text")

  @staticmethod
  def model_config(config: dict, vocab_size: int | None = None, dtype=None, **wrapper):
    """QwenTextConfig from an HF config (top level or text_config) + the wrapper settings
    (hidden_state_skip_layer, apply_final_norm, max_length, crop_start; reference defaults)."""
    from wc_jax.models.encoders.qwen_text import QwenTextConfig
    over = {}
    if vocab_size:
      over["vocab_size"] = vocab_size
    if dtype is not None:
      over.update(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    return QwenTextConfig.from_hf(config, **wrapper, **over)

  def expected_keys(self, config: dict, prefix: str = "model.", vocab_size: int | None = None):
    """Every decoder key of the FULL checkpoint (all layers) -> shape; no weights needed."""
    cfg = self.model_config(config, vocab_size)
    full = cfg.lm.replace(num_hidden_layers=cfg.num_hidden_layers_full)
    return expand(qwen_lm_table(full, prefix), full.num_hidden_layers)

  def torch_to_params(self, source, config: dict, dtype=None, mesh=None, **wrapper):
    """Reads only the layers the text path runs (L - hidden_state_skip_layer)."""
    del mesh
    keys = list(source.keys())
    prefix = _qwen_prefix(keys)
    embed = prefix + "embed_tokens.weight"
    if embed not in set(keys):
      raise QwenTextKeyError(f"Qwen checkpoint has no {embed}")
    cfg = self.model_config(config, source.shape(embed)[0], dtype, **wrapper)
    full = cfg.lm.replace(num_hidden_layers=cfg.num_hidden_layers_full)
    ours = {k: source.shape(k) for k in keys if not _QWEN_IGNORED.match(k)}
    _check(expand(qwen_lm_table(full, prefix), full.num_hidden_layers), ours, QwenTextKeyError, "Qwen2.5-VL text")
    params = _read(source, qwen_lm_table(cfg.lm, prefix), cfg.lm.num_hidden_layers, cfg.lm.params_dtype)
    return cfg.to_dict(), params

  def params_to_torch(self, params, model_config: dict, dtype=None, reference_config=None):
    """The kept layers only (a text-path checkpoint), under `model.`."""
    from wc_jax.models.encoders.qwen_text import QwenTextConfig
    cfg = QwenTextConfig.from_dict(model_config)
    ref = dict(reference_config) if reference_config else {
        "model_type": "qwen2_5_vl_text", "vocab_size": cfg.lm.vocab_size, "hidden_size": cfg.lm.hidden_size,
        "intermediate_size": cfg.lm.intermediate_size, "num_hidden_layers": cfg.lm.num_hidden_layers,
        "num_attention_heads": cfg.lm.num_attention_heads, "num_key_value_heads": cfg.lm.num_key_value_heads,
        "rms_norm_eps": cfg.lm.rms_norm_eps, "rope_theta": cfg.lm.rope_theta,
        "rope_scaling": {"type": "default", "mrope_section": list(cfg.lm.mrope_section)}}
    return ref, _write(params, qwen_lm_table(cfg.lm, "model."), cfg.lm.num_hidden_layers, dtype)

  def build_model(self, model_config: dict, params, mesh=None, **overrides):
    from wc_jax.models.encoders.qwen_text import QwenTextConfig, QwenTextEncoder
    cfg = QwenTextConfig.from_dict(model_config)
    if overrides:
      cfg = dataclasses.replace(cfg, lm=cfg.lm.replace(**overrides))
    return _build(lambda: QwenTextEncoder(cfg, rngs=nnx.Rngs(0)), params, QwenTextKeyError, "Qwen2.5-VL text", mesh)


qwen25vl_text = _QwenTextConverter()


# ----------------------------------------------------------------------------- umT5 (LingBot-World / Wan)

class UMT5KeyError(ConversionError):
  """A umT5 checkpoint does not match the encoder it is converted for."""


UMT5_RELEASED_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
UMT5_MODEL_TYPE = "wan_umt5"      # config.json model_type of the folders wc_jax writes (the release has none)


def umt5_table(cfg) -> list[Entry]:
  """Wan's `T5Encoder` state dict (shared_pos=False): per-layer `pos_embedding`, `ffn.gate.0` is
  the GELU branch (wi_0), `ffn.fc1` the linear one (wi_1), `ffn.fc2` the output (wo)."""
  d, inner, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
  b = "blocks.{i}."
  t = [Entry("token_embedding.weight", ("embed_tokens",), "copy", (cfg.vocab_size, d))]
  for n in ("q", "k", "v"):
    t.append(Entry(b + f"attn.{n}.weight", ("blocks", n, "kernel"), "linear", (inner, d), True))
  t.append(Entry(b + "attn.o.weight", ("blocks", "o", "kernel"), "linear", (d, inner), True))
  t.append(Entry(b + "norm1.weight", ("blocks", "attn_norm", "weight"), "copy", (d,), True))
  t.append(Entry(b + "norm2.weight", ("blocks", "ffn_norm", "weight"), "copy", (d,), True))
  t.append(Entry(b + "ffn.gate.0.weight", ("blocks", "wi_0", "kernel"), "linear", (f, d), True))
  t.append(Entry(b + "ffn.fc1.weight", ("blocks", "wi_1", "kernel"), "linear", (f, d), True))
  t.append(Entry(b + "ffn.fc2.weight", ("blocks", "wo", "kernel"), "linear", (d, f), True))
  bias_shape = (cfg.relative_attention_num_buckets, cfg.num_heads)
  if cfg.per_layer_position_bias:
    t.append(Entry(b + "pos_embedding.embedding.weight", ("blocks", "relative_attention_bias"), "copy",
                   bias_shape, True))
  else:
    t.append(Entry("pos_embedding.embedding.weight", ("relative_attention_bias",), "copy", bias_shape))
  t.append(Entry("norm.weight", ("final_layer_norm", "weight"), "copy", (d,)))
  return t


def open_umt5_checkpoint(path):
  """A tensor source for a umT5 checkpoint: the released `.pth` (torch_files.open_state_dict:
  through torch when it is installed, else without it), a `.safetensors` file, or a folder
  holding either (safetensors preferred)."""
  return open_state_dict(path)


class _UMT5Converter:
  KIND = kinds.UMT5
  TORCH_FILENAME = "models_t5_umt5-xxl-enc.safetensors"
  STRIP_PREFIX = None
  Error = UMT5KeyError

  @staticmethod
  def matches(config: dict) -> bool:
    return config.get("model_type") == UMT5_MODEL_TYPE or config.get("kind") == "encoder_umt5"

  @staticmethod
  def model_config(config: dict | None = None, vocab_size: int | None = None, dtype=None):
    """T5Config from the reference T5Encoder arguments: `config` is a dict of them
    (vocab/dim/dim_attn/dim_ffn/num_heads/num_layers/num_buckets/shared_pos), a fixture
    config.json (its `reference_args`), a folder config.json written by wc_jax, or None for umT5-XXL."""
    from wc_jax.models.encoders.umt5 import UMT5_XXL, umt5_config
    args = dict(UMT5_XXL)
    if config:
      src = config.get("reference_args", config)
      args.update({k: v for k, v in src.items() if k not in ("model_type", "kind", "architectures")})
      if "shared_pos" in config and "shared_pos" not in src:
        args["shared_pos"] = config["shared_pos"]
    if vocab_size:
      args.pop("vocab_size", None)
      args["vocab"] = vocab_size
    if dtype is not None:
      args.update(dtype=jnp.dtype(dtype).name, param_dtype=jnp.dtype(dtype).name)
    try:
      return umt5_config(**args)
    except (TypeError, ValueError) as e:
      raise UMT5KeyError(f"umT5 config: {e}") from e

  def expected_keys(self, config: dict | None = None, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Reference key -> shape (None: the released umT5-XXL encoder); no weights needed."""
    cfg = self.model_config(config, vocab_size)
    return expand(umt5_table(cfg), cfg.num_layers)

  def torch_to_params(self, source, config: dict | None = None, dtype=None, mesh=None):
    """Reads layer by layer (the released .pth is memory-mapped); the vocabulary size is the
    embedding's. Every missing / unexpected / mis-shaped key is named at once (UMT5KeyError)."""
    del mesh
    keys = list(source.keys())
    if "token_embedding.weight" not in keys:
      raise UMT5KeyError(f"umT5 checkpoint has no token_embedding.weight; keys: {sorted(keys)[:12]}")
    cfg = self.model_config(config, source.shape("token_embedding.weight")[0], dtype)
    table = umt5_table(cfg)
    _check(expand(table, cfg.num_layers), {k: source.shape(k) for k in keys}, UMT5KeyError, "umT5")
    return dataclasses.asdict(cfg), _read(source, table, cfg.num_layers, jnp.dtype(cfg.param_dtype))

  def params_to_torch(self, params, model_config: dict, dtype=None, reference_config=None):
    from wc_jax.models.encoders.t5 import T5Config
    from wc_jax.models.encoders.umt5 import reference_args
    cfg = T5Config(**model_config)
    ref = dict(reference_config) if reference_config and self.matches(reference_config) else {
        "model_type": UMT5_MODEL_TYPE, **reference_args(cfg)}
    return ref, _write(params, umt5_table(cfg), cfg.num_layers, dtype)

  def build_model(self, model_config: dict, params, mesh=None, **overrides):
    from wc_jax.models.encoders.t5 import T5Config, T5Encoder
    cfg = T5Config(**{**model_config, **overrides})
    return _build(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)), params, UMT5KeyError, "umT5", mesh)


umt5 = _UMT5Converter()
CONVERTERS = (byt5, siglip, qwen25vl_text, umt5)


def load_umt5(path, config: dict | None = None, *, dtype=None, param_dtype=None, mesh=None):
  """The umT5 encoder from the released `models_t5_umt5-xxl-enc-bf16.pth` (or a safetensors
  file / folder with its keys, or a wc_jax Orbax folder). `config`: reference T5Encoder
  arguments (None: umT5-XXL, or the folder's config.json when it has one); `dtype` the compute
  dtype, `param_dtype` what the weights are stored in (default float32; the release is bf16)."""
  import pathlib
  from wc_jax.convert.common import load_orbax
  path = pathlib.Path(path)
  if (path / "wc_jax.json").exists():
    params, meta = load_orbax(path)
    if meta.get("kind") != kinds.UMT5:
      raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a {kinds.UMT5!r} one")
    model_config = meta["model_config"]
  else:
    if config is None and path.is_dir() and (path / "config.json").exists():
      from wc_jax.convert.common import read_config
      config = read_config(path)
    model_config, params = umt5.torch_to_params(open_umt5_checkpoint(path), config, dtype=param_dtype)
  overrides = {"dtype": jnp.dtype(dtype).name} if dtype is not None else {}
  return umt5.build_model(model_config, params, mesh=mesh, **overrides)


def convert_umt5(src, dst, config: dict | None = None, dtype=None):
  """The released `models_t5_umt5-xxl-enc-bf16.pth` (no config.json beside it: the CLI's
  `python -m wc_jax.convert --from-torch FILE --kind=umt5`) -> a wc_jax Orbax folder of kind umt5.
  `config`: reference T5Encoder arguments (None: umT5-XXL); `dtype`: stored dtype (default float32)."""
  from wc_jax.convert.common import save_orbax
  model_config, params = umt5.torch_to_params(open_umt5_checkpoint(src), config, dtype=dtype)
  from wc_jax.models.encoders.t5 import T5Config
  from wc_jax.models.encoders.umt5 import reference_args
  ref = {"model_type": UMT5_MODEL_TYPE, **reference_args(T5Config(**model_config))}
  return save_orbax(params, dst, {"kind": kinds.UMT5, "model_config": model_config, "reference_config": ref})


def umt5_from_config(section, *, mesh=None, seed: int = 0):
  """(encoder, tokenizer, text_len) from a config's `text_encoder` section (configs/lingbot_*.py):
  kind 'umt5', checkpoint (the release's .pth, a safetensors file / folder, or a wc_jax folder),
  tokenizer (the release's google/umt5-xxl folder), text_len, dtype / param_dtype, arch (the
  reference T5Encoder arguments). An empty checkpoint is refused unless
  `allow_random_init` is set in the section (random weights at `arch`, seeded by `seed`).
  Prompts -> DiT context: `wc_jax.models.encoders.umt5.encode_prompts(encoder, tokenizer,
  prompts, text_len)`."""
  get = section.get
  kind = get("kind", kinds.UMT5)
  if kind != kinds.UMT5:
    raise ConversionError(f"text_encoder.kind={kind!r}: only {kinds.UMT5!r} is supported here")
  arch = get("arch", None) or {}
  arch = arch.to_dict() if hasattr(arch, "to_dict") else dict(arch)
  dtype, param_dtype = get("dtype", None), get("param_dtype", None)
  missing = [f"text_encoder.{k}" for k in ("checkpoint", "tokenizer") if not get(k, "")
             and not (k == "checkpoint" and get("allow_random_init", False))]
  if missing:
    raise ConversionError("the umT5 text encoder needs " + " and ".join(missing) + " (the release's "
                          f"{UMT5_RELEASED_FILENAME} and its google/umt5-xxl tokenizer folder); set them with "
                          "--config.text_encoder.checkpoint=... / --config.text_encoder.tokenizer=...")
  if get("checkpoint", ""):
    encoder = load_umt5(get("checkpoint"), arch or None, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
  else:
    from wc_jax.models.encoders.t5 import T5Encoder
    cfg = umt5.model_config(arch or None, dtype=param_dtype)
    if dtype is not None:
      cfg = dataclasses.replace(cfg, dtype=jnp.dtype(dtype).name)
    encoder = T5Encoder(cfg, rngs=nnx.Rngs(seed))
  text_len = int(get("text_len", 512))
  return encoder, load_umt5_tokenizer(get("tokenizer")), text_len


def load_umt5_tokenizer(path):
  """The umT5 tokenizer (`wc_jax.models.encoders.umt5.UMT5Tokenizer`) from the checkpoint's
  tokenizer folder (`google/umt5-xxl/` of the Wan / LingBot release) or a file in it:
  tokenizer.json through the `tokenizers` package (the fast tokenizer the reference's
  AutoTokenizer builds), else spiece.model through `sentencepiece`."""
  import pathlib
  from wc_jax.models.encoders.umt5 import UMT5Tokenizer
  path = pathlib.Path(path)
  folder = path if path.is_dir() else path.parent
  tj = path if path.name == "tokenizer.json" else folder / "tokenizer.json"
  sp = path if path.suffix == ".model" else folder / "spiece.model"
  errors = []
  if path.suffix != ".model" and tj.is_file():
    try:
      from tokenizers import Tokenizer
    except ImportError as e:
      errors.append(f"{tj} needs the `tokenizers` package ({e})")
    else:
      tok = Tokenizer.from_file(str(tj))
      eos, pad = tok.token_to_id("</s>"), tok.token_to_id("<pad>")
      if eos is None or pad is None:
        raise ConversionError(f"{tj}: no </s> / <pad> token; not a T5 tokenizer")
      return UMT5Tokenizer(lambda s: tok.encode(s, add_special_tokens=False).ids, eos_id=eos, pad_id=pad)
  if sp.is_file():
    try:
      import sentencepiece
    except ImportError as e:
      errors.append(f"{sp} needs the `sentencepiece` package ({e})")
    else:
      proc = sentencepiece.SentencePieceProcessor(model_file=str(sp))
      if proc.eos_id() < 0 or proc.pad_id() < 0:
        raise ConversionError(f"{sp}: no eos / pad piece; not a T5 sentencepiece model")
      return UMT5Tokenizer(lambda s: proc.encode(s), eos_id=proc.eos_id(), pad_id=proc.pad_id())
  if errors:
    raise ImportError("; ".join(errors))
  raise FileNotFoundError(f"no umT5 tokenizer at {path}: expected tokenizer.json or spiece.model "
                          "(the release's google/umt5-xxl folder)")


def converter(kind: str):
  """The encoder converter for `kind` (kinds.BYT5 / SIGLIP / QWEN25VL_TEXT / UMT5)."""
  for c in CONVERTERS:
    if c.KIND == kind:
      return c
  raise ConversionError(f"unknown encoder kind {kind!r}; encoder kinds: {[c.KIND for c in CONVERTERS]}")


def load_encoder(kind: str, path, *, mesh=None, dtype=None, **wrapper):
  """The `kind` encoder with the weights at `path`: a wc_jax Orbax folder (wc_jax.json kind must
  match) or a reference folder (config.json + *.safetensors), converted on the fly. For the text
  path `wrapper` sets hidden_state_skip_layer / apply_final_norm / max_length / crop_start
  (defaults: the reference's 2 / False / 1000 / 108) when converting from a reference folder.
  `dtype` is the compute dtype (params stay as stored). A Glyph-SDXL-v2 `byt5_model.pt` must be
  saved as safetensors first (`safetensors.torch.save_file(torch.load(p), "byt5_model.safetensors")`)
  next to byt5-small's config.json."""
  import pathlib
  from wc_jax.convert.common import TensorSource, load_orbax, read_config
  conv = converter(kind)
  if kind == kinds.UMT5:   # the release ships a bare .pth (no config.json)
    if wrapper:
      raise TypeError(f"{kind}: unexpected options {sorted(wrapper)}")
    return load_umt5(path, dtype=dtype, mesh=mesh)
  path = pathlib.Path(path)
  if (path / "wc_jax.json").exists():
    params, meta = load_orbax(path)
    if meta.get("kind") != kind:
      raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    model_config = meta["model_config"]
  else:
    config = read_config(path)
    if not conv.matches(config):
      raise ConversionError(f"{path}/config.json (model_type {config.get('model_type')!r}) is not a {kind!r} "
                            "checkpoint")
    source = TensorSource(path)
    if kind == kinds.QWEN25VL_TEXT:
      model_config, params = conv.torch_to_params(source, config, **wrapper)
    else:
      if wrapper:
        raise TypeError(f"{kind}: unexpected options {sorted(wrapper)}")
      model_config, params = conv.torch_to_params(source, config)
  overrides = {}
  if dtype is not None:
    overrides["dtype"] = jnp.dtype(dtype).name
  return conv.build_model(model_config, params, mesh=mesh, **overrides)
