"""HPSv3 as WorldCompass's visual-quality reward: the scorer and the drift reward.

WorldCompass (`worldcompass/reward_function/reward_function.py:593-618`) scores window
frames 3::4 and the video's first frame with HPSv3 and the fixed prompt
`QUALITY_PROMPT`, keeps mu (column 0 of HPSv3's (mu, sigma)) and rewards

    hpsv3_quality_drift = -mean_k |mu(window[3 + 4k]) - mu(first frame)|

`HPSv3Scorer` is an nnx.Module scorer (frames [N,H,W,3] in [0,1] or uint8 -> mu [N]),
so it plugs into `quality_drift_reward` / `quality_reward` like the CLIP scorer, with
the weights traced under jit. Differences from the reference kept on purpose: frames
are converted to uint8 by rounding (the reference writes JPEG files, quality 75, and
reads them back); everything after the uint8 pixels is the reference's, bit-exact up
to the resize.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.qwen2vl import processor
from wc_jax.models.qwen2vl.hpsv3 import HPSv3Config, HPSv3Model
from wc_jax.rewards.quality import FRAME_OFFSET, FRAME_STRIDE, quality_drift_reward, quality_reward

QUALITY_PROMPT = processor.QUALITY_PROMPT
MAX_TOKENS = 32768    # Qwen2-VL max_position_embeddings; the reference does not truncate


class HPSv3Scorer(nnx.Module):
  """frames [N,H,W,3] (float in [0,1], or uint8) -> HPSv3 mu [N] float32 (`.scores` gives (mu, sigma)).

  Args:
    model: an `HPSv3Model` (real weights: `load_hpsv3(folder)`).
    prompt: the text prompt (WorldCompass's quality rewards use `QUALITY_PROMPT`).
    tokenize: plain text -> Qwen2 ids; needed for any prompt but `QUALITY_PROMPT`.
    min_pixels, max_pixels: the resize budget (HPSv3: 200704 both).
    batch_size: images per model call (0 = all at once).
  """

  def __init__(self, model: HPSv3Model, prompt: str = QUALITY_PROMPT, tokenize: Callable | None = None, *,
               min_pixels: int = processor.HPSV3_PIXELS, max_pixels: int = processor.HPSV3_PIXELS,
               batch_size: int = 0):
    if not isinstance(model, HPSv3Model):
      raise TypeError(f"HPSv3Scorer: model must be an HPSv3Model, got {type(model).__name__}")
    if tokenize is None and prompt != QUALITY_PROMPT:
      raise ValueError("HPSv3Scorer: a prompt other than QUALITY_PROMPT needs tokenize= "
                       "(e.g. load_tokenizer(<Qwen2-VL checkpoint folder>))")
    self.model = model
    self.prompt = prompt
    self.tokenize = tokenize
    self.min_pixels = int(min_pixels)
    self.max_pixels = int(max_pixels)
    self.batch_size = int(batch_size)

  def _ids(self, n_tokens: int) -> list[int]:
    ids = processor.chat_ids(self.prompt, n_tokens, self.tokenize)
    if len(ids) > MAX_TOKENS:
      raise ValueError(f"HPSv3: the scoring input has {len(ids)} tokens, more than the model's {MAX_TOKENS} "
                       f"positions (prompt of {len(self.prompt)} characters)")
    return ids

  def scores(self, frames):
    """[N, 2] float32 (mu, sigma) per frame."""
    frames = _check_frames(frames)
    u8 = processor.to_uint8(frames)
    n = frames.shape[0]
    pv, grid, _ = processor.preprocess(u8, self.min_pixels, self.max_pixels)
    per = int(processor.image_token_count(grid[:1])[0])
    ids = np.asarray(self._ids(per), np.int32)
    step = self.batch_size or n
    out = []
    patches = pv.reshape(n, -1, pv.shape[-1])
    for s in range(0, n, step):
      b = min(step, n - s)
      batch_ids = jnp.asarray(np.tile(ids[None], (b, 1)))
      mask = jnp.ones(batch_ids.shape, jnp.int32)
      out.append(self.model(batch_ids, mask, patches[s:s + b].reshape(-1, pv.shape[-1]), grid[s:s + b]))
    logits = jnp.concatenate(out, axis=0) if len(out) > 1 else out[0]
    if not jnp.issubdtype(frames.dtype, jnp.integer):   # NaN/inf pixels give NaN scores under jit
      bad = ~jnp.all(jnp.isfinite(frames.reshape(n, -1)), axis=1)
      logits = jnp.where(bad[:, None], jnp.nan, logits)
    return logits

  def __call__(self, frames):
    return self.scores(frames)[:, 0]


def _check_frames(frames):
  frames = frames if isinstance(frames, (jax.Array, np.ndarray)) else np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"HPSv3: frames must be [N,H,W,3] RGB, got shape {tuple(frames.shape)}")
  if 0 in frames.shape:
    raise ValueError(f"HPSv3: empty frames, shape {tuple(frames.shape)} (need N >= 1 and H, W >= 1)")
  dt = jnp.dtype(frames.dtype)
  if not (dt == jnp.uint8 or jnp.issubdtype(dt, jnp.floating)):
    raise TypeError(f"HPSv3: frames must be float in [0,1] or uint8, got dtype {dt}")
  if jnp.issubdtype(dt, jnp.floating) and not isinstance(frames, jax.core.Tracer):
    if not bool(np.all(np.isfinite(np.asarray(frames)))):
      raise ValueError("HPSv3: frames contain NaN or inf")
  return jnp.asarray(frames)


def hpsv3_quality_drift_reward(frames, scorer, first_frame=None, *, first_score=None,
                               offset: int = FRAME_OFFSET, stride: int = FRAME_STRIDE):
  """WorldCompass `hpsv3_quality_drift_score` of one window (jit-compiled).

  Args:
    frames: [F,H,W,3] decoded window frames (float in [0,1]).
    scorer: an `HPSv3Scorer` with `QUALITY_PROMPT` (or any frames -> [N] scorer).
    first_frame: [H,W,3] first frame of the whole video, scored in the same call, or
    first_score: its precomputed mu (score it once per group with `scorer(first[None])[0]`).
    offset, stride: scored window frames (3::4).

  Returns:
    float32 scalar <= 0: -mean_k |mu_k - mu_first|.
  """
  return quality_drift_reward(frames, scorer, first_frame, first_score=first_score, offset=offset, stride=stride)


def hpsv3_quality_reward(frames, scorer, *, offset: int = FRAME_OFFSET, stride: int = FRAME_STRIDE):
  """WorldCompass `hpsv3_quality_acc`: mean mu over window frames 3::4."""
  return quality_reward(frames, scorer, offset=offset, stride=stride)


# ----------------------------------------------------------------------------- building a scorer

def load_hpsv3(path: str | os.PathLike, **overrides) -> HPSv3Model:
  """HPSv3 from a folder: a wc_jax Orbax checkpoint (wc_jax.json) or the reference layout
  (config.json of Qwen2-VL-7B-Instruct + HPSv3.safetensors, or a fixture folder).
  `overrides`: execution options (dtype="bfloat16", attention_impl, remat_policy)."""
  from wc_jax.convert import hpsv3 as convert_hpsv3
  from wc_jax.convert.common import TensorSource, load_orbax, read_config
  path = pathlib.Path(path)
  if (path / "wc_jax.json").exists():
    params, meta = load_orbax(path)
    return convert_hpsv3.build_model(meta["model_config"], params, **overrides)
  config = read_config(path)
  if "reward_model_ctor" not in config:   # a plain Qwen2-VL config.json beside HPSv3.safetensors
    config = {"qwen2vl_config": config, "reward_model_ctor": {"output_dim": 2, "rm_head_kwargs": None}}
  model_config, params = convert_hpsv3.torch_to_params(TensorSource(path), config)
  return convert_hpsv3.build_model(model_config, params, **overrides)


def random_hpsv3(cfg: HPSv3Config, seed: int = 0) -> HPSv3Model:
  """A random model with non-trivial outputs (smoke runs, tests): the fixtures' init rule
  (kernels N(0, 1/fan_in), norm scales 1 + 0.1 N, biases 0.1 N, embeddings N(0, 1))."""
  model = HPSv3Model(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    names = [str(getattr(p, "key", p)) for p in path]
    stacked = "blocks" in names or (names[0] == "model" and names[1] == "layers")
    core = x.shape[1:] if stacked else x.shape
    if names[-1] == "embedding":
      v = rng.standard_normal(x.shape)
    elif names[-1] == "kernel":
      v = rng.standard_normal(x.shape) / np.sqrt(core[0])
    elif names[-1] in ("weight", "scale"):
      v = 1.0 + 0.1 * rng.standard_normal(x.shape)
    else:
      v = 0.1 * rng.standard_normal(x.shape)
    return jnp.asarray(v, x.dtype)

  pure = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
  nnx.update(model, state)
  return model


def build_scorer(section) -> HPSv3Scorer:
  """An HPSv3 scorer from a config section (ml_collections / dict) with fields:

    checkpoint: folder for `load_hpsv3` ("" = a random tiny model, smoke runs only);
    tokenizer: folder or tokenizer.json for prompts other than QUALITY_PROMPT ("" = none);
    prompt (QUALITY_PROMPT), dtype ("bfloat16"), attention_impl ("xla"), remat_policy ("none"),
    pixels (200704), batch_size (0), seed (0).
  """
  get = (lambda k, d: section.get(k, d)) if hasattr(section, "get") else (lambda k, d: getattr(section, k, d))
  overrides = {k: get(k, None) for k in ("dtype", "attention_impl", "remat_policy") if get(k, None)}
  if get("checkpoint", ""):
    model = load_hpsv3(get("checkpoint", ""), **overrides)
  else:
    from wc_jax.models.qwen2vl.hpsv3 import tiny_config
    cfg = tiny_config(image_token_id=processor.IMAGE_PAD_ID, reward_token_id=processor.REWARD_ID,
                      pad_token_id=processor.PAD_ID)
    cfg = cfg.replace(text=cfg.text.replace(vocab_size=processor.REWARD_ID + 1))
    model = random_hpsv3(cfg.with_execution(**overrides) if overrides else cfg, seed=int(get("seed", 0)))
  tok = get("tokenizer", "")
  pixels = int(get("pixels", processor.HPSV3_PIXELS))
  return HPSv3Scorer(model, get("prompt", QUALITY_PROMPT), load_tokenizer(tok) if tok else None,
                     min_pixels=pixels, max_pixels=pixels, batch_size=int(get("batch_size", 0)))


# ----------------------------------------------------------------------------- tokenizer (optional)

def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2 byte-level alphabet (printable stand-ins for the 256 byte values)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


# Qwen2's pre-tokenizer split pattern (tokenizer.json `pre_tokenizer`); read from the file when present.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class BPETokenizer:
  """Byte-level BPE from a Hugging Face tokenizer.json (Qwen2's: NFC, regex split, byte-level, merges).

  Plain text only: `chat_ids` cuts the special tokens out before calling it. Needs the
  `regex` package (\\p{L} classes)."""

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], pattern: str = _QWEN2_SPLIT,
               normalize: str | None = "NFC"):
    try:
      import regex
    except ImportError as e:   # pragma: no cover - depends on the environment
      raise ImportError("the HPSv3 tokenizer needs the `regex` package (pip install regex)") from e
    self.vocab = dict(vocab)
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.pattern = regex.compile(pattern)
    self.normalize = normalize
    self.byte_map = _bytes_to_unicode()
    self._cache: dict[str, list[int]] = {}

  def _bpe(self, word: str) -> list[int]:
    if word in self._cache:
      return self._cache[word]
    parts = list(word)
    while len(parts) > 1:
      pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts[:-1], parts[1:]))]
      pairs = [(r, i) for r, i in pairs if r is not None]
      if not pairs:
        break
      r, _ = min(pairs)
      a, b = next((parts[i], parts[i + 1]) for rr, i in pairs if rr == r)
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
          merged.append(a + b)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    try:
      ids = [self.vocab[p] for p in parts]
    except KeyError as e:
      raise ValueError(f"tokenizer: piece {e.args[0]!r} is not in the vocabulary") from None
    self._cache[word] = ids
    return ids

  def __call__(self, text: str) -> list[int]:
    import unicodedata
    if self.normalize:
      text = unicodedata.normalize(self.normalize, text)
    ids: list[int] = []
    for word in self.pattern.findall(text):
      ids.extend(self._bpe("".join(self.byte_map[b] for b in word.encode("utf-8"))))
    return ids

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "BPETokenizer":
    with open(path, encoding="utf-8") as f:
      j = json.load(f)
    model = j.get("model", {})
    if model.get("type") != "BPE":
      raise ValueError(f"{path}: not a BPE tokenizer.json (model type {model.get('type')!r})")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    pattern = _QWEN2_SPLIT
    pre = j.get("pre_tokenizer") or {}
    for p in ([pre] + list(pre.get("pretokenizers", []))):
      if p.get("type") == "Split" and isinstance(p.get("pattern"), dict) and "Regex" in p["pattern"]:
        pattern = p["pattern"]["Regex"]
    norm = j.get("normalizer") or {}
    return cls(model["vocab"], merges, pattern, "NFC" if norm.get("type") == "NFC" else None)


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer:
  """The Qwen2 tokenizer from a checkpoint folder (its tokenizer.json) or the file itself."""
  path = pathlib.Path(path)
  f = path / "tokenizer.json" if path.is_dir() else path
  if not f.exists():
    raise FileNotFoundError(f"no tokenizer.json at {path}")
  return BPETokenizer.from_json(f)
