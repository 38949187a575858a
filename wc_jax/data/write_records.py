"""Writes trajectory records (TFDS array_record) for RL post-training.

    # the synthetic world (no encoders needed; dims from a config)
    python -m wc_jax.data.write_records synthetic --out /data/wc --name synth_tiny \\
        --config configs/tiny.py --num_examples 256 --num_latents 16

    # a folder of images + prompts, encoded by wc_jax's JAX encoders from real checkpoints (no torch)
    python -m wc_jax.data.write_records images --images /data/imgs --out /data/wc --name mine \\
        --text_encoder /ckpt/Qwen2.5-VL-7B-Instruct --byt5 /ckpt/byt5 --siglip /ckpt/siglip \\
        --vae /ckpt/hunyuan_vae --config configs/hunyuan8b.py --state_dtype bfloat16

    # a folder of images + captions, encoded by your encoders (any Python callable)
    python -m wc_jax.data.write_records images --images /data/imgs --out /data/wc --name mine \\
        --encoder my_pkg.encoders:make_encoder --encoder_arg ckpt=/ckpt/hunyuan --trajectory random

    # the reference's precomputed .pt files (prepare_image_text_latent_simple.py); needs torch
    python -m wc_jax.data.write_records reference-pt --latents_json /prep/latents.json \\
        --out /data/wc --name mine --poses /prep/harder_random_poses.json

Every example pairs one image's conditioning with one trajectory: `random`
(the reference generator, seed = --seed + example index), a pose string
("w-15, right-16"), or the reference's pose JSON (`--poses`, used round-robin
like its dataset); a `prompts.jsonl` entry may carry its own pose string
("actions"). See docs/data.md for the record fields and the encoder mode.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from wc_jax.data import synthetic_world, tfds_builder, trajectories

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ENCODER_KEYS = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states",
                "first_latent")

# ----------------------------------------------------------------------------- inputs


class ImageEntry(NamedTuple):
  """One input of the images mode: image path, prompt, and an optional pose string."""
  path: str
  caption: str
  actions: str | None = None


def _prompts_jsonl(folder: str, path: str) -> list[ImageEntry]:
  """`prompts.jsonl`: {"image", "prompt"[, "actions"]} per line ("image_path"/"caption" also read)."""
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        e = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"prompts.jsonl line {n}: not JSON ({err})") from None
      image = e.get("image", e.get("image_path")) if isinstance(e, Mapping) else None
      prompt = e.get("prompt", e.get("caption")) if isinstance(e, Mapping) else None
      if not isinstance(image, str) or not isinstance(prompt, str):
        raise ValueError(f"prompts.jsonl line {n} must have string 'image' and 'prompt', got {line.strip()!r}")
      p = os.path.join(folder, image)          # an absolute image path stays as it is
      if not os.path.isfile(p):
        raise FileNotFoundError(f"prompts.jsonl line {n}: image {p} not found")
      actions = e.get("actions")
      if actions is not None and not isinstance(actions, str):
        raise ValueError(f"prompts.jsonl line {n}: 'actions' must be a pose string like 'w-8, right-4', "
                         f"got {actions!r}")
      out.append(ImageEntry(p, prompt, actions))
  return out


def list_images(folder: str) -> list[ImageEntry]:
  """(image path, caption, pose string or None) entries of a folder.

  Prompts come from `prompts.jsonl` (one {"image", "prompt", optional "actions"} per
  line), `captions.json` (the reference's input format: a list of {"image_path",
  "caption"}), `captions.jsonl` (one such object per line), or a `<image stem>.txt`
  beside each image, in that order of preference.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"list_images: {folder} is not a folder")
  pairs: list[ImageEntry] = []
  if os.path.isfile(os.path.join(folder, "prompts.jsonl")):
    pairs = _prompts_jsonl(folder, os.path.join(folder, "prompts.jsonl"))
    if not pairs:
      raise ValueError(f"list_images: {folder}/prompts.jsonl has no entries")
    return pairs
  entries = None
  for name in ("captions.json", "captions.jsonl"):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      with open(path) as f:
        if name.endswith(".json"):
          entries = json.load(f)
        else:
          entries = [json.loads(line) for line in f if line.strip()]
      break
  if entries is not None:
    for n, e in enumerate(entries):
      if not isinstance(e, Mapping) or "image_path" not in e or "caption" not in e:
        raise ValueError(f"captions entry {n} must have 'image_path' and 'caption', got {e!r}")
      p = os.path.join(folder, e["image_path"])   # an absolute image_path stays as it is
      if not os.path.isfile(p):
        raise FileNotFoundError(f"captions entry {n}: image {p} not found")
      pairs.append(ImageEntry(p, str(e["caption"])))
  else:
    for name in sorted(os.listdir(folder)):
      if not name.lower().endswith(IMAGE_SUFFIXES):
        continue
      txt = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
      if not os.path.isfile(txt):
        raise FileNotFoundError(f"list_images: no caption for {name}: add {txt} or a "
                                f"captions.json")
      with open(txt) as f:
        pairs.append(ImageEntry(os.path.join(folder, name), f.read().strip()))
  if not pairs:
    raise ValueError(f"list_images: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  return pairs


def load_image(path: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def trajectory_source(kind: str, num_latents: int, seed: int = 0,
                      poses: str | None = None) -> Callable[[int], trajectories.Trajectory]:
  """index -> trajectory for `--trajectory` (random | a pose string) or `--poses`."""
  if poses:
    trajs = trajectories.load_pose_json(poses)
    short = [len(t.c2w) for t in trajs if len(t.c2w) < num_latents]
    if short:
      raise ValueError(f"--poses: trajectories of {min(short)} latents are shorter than "
                       f"--num_latents {num_latents}")
    return lambda i: trajs[i % len(trajs)].window(0, num_latents)
  if kind == "random":
    return lambda i: trajectories.random_trajectory(seed + i, num_latents)
  fixed = trajectories.trajectory_from_string(kind, num_latents)
  return lambda i: fixed


def load_encoder(target: str, args: Mapping[str, object]):
  """`module:factory` -> factory(**args): an encoder (image uint8 [H,W,3], prompt) -> dict
  with ENCODER_KEYS."""
  if ":" not in target:
    raise ValueError(f"--encoder must be 'module:factory', got {target!r}")
  mod, _, attr = target.partition(":")
  try:
    factory = getattr(importlib.import_module(mod), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"--encoder {target!r} cannot be loaded: {e}") from None
  return factory(**args)


def random_encoder(text_dim: int, byt5_dim: int, vision_dim: int, latent_channels: int,
                   text_tokens: int = 12, byt5_tokens: int = 6, vision_tokens: int = 5,
                   vae_factor: int = 16):
  """A stand-in encoder (seeded by the prompt) for smoke tests of the images path.

  The first latent is `synthetic_world.pooled_latent` of the image.
  """
  def encode(image: np.ndarray, prompt: str) -> dict:
    rng = np.random.default_rng(list(prompt.encode("utf-8")) or [0])
    h = image.shape[0] // vae_factor * vae_factor
    w = image.shape[1] // vae_factor * vae_factor
    return dict(
        text_states=rng.standard_normal((text_tokens, text_dim)).astype(np.float32),
        text_mask=np.arange(text_tokens) < max(1, min(text_tokens, len(prompt.split()))),
        byt5_states=rng.standard_normal((byt5_tokens, byt5_dim)).astype(np.float32),
        byt5_mask=np.arange(byt5_tokens) < 1,
        vision_states=rng.standard_normal((vision_tokens, vision_dim)).astype(np.float32),
        first_latent=synthetic_world.pooled_latent(image[:h, :w], latent_channels, vae_factor))
  return encode


# ----------------------------------------------------------------------------- JAX encoders

class JaxEncoder:
  """(image uint8 [H,W,3], prompt) -> record states, with wc_jax's own encoders (no torch).

  The DiT's conditioning as WorldPlay's pipeline builds it for the positive prompt (the
  trainer adds the CFG negatives itself): the Qwen2.5-VL text path with the video template
  (`text_states` [max_length, C], `text_mask`), ByT5 on the quoted glyph text
  (`byt5_states` [256, d], zeros and mask 0 without quotes), SigLIP on the image after the
  `resolution` bucket resize (`vision_states` [tokens, D]), and the VAE latent of the image
  cover-resized (LANCZOS) and centre-cropped to `frame_hw` (`first_latent` [C, h, w],
  `latent_dist.mode() * scaling_factor`; `frame_hw` None: the image's `resolution` bucket).

  on_overflow="error" rejects a prompt longer than the text encoder's max_length (or quoted
  text longer than ByT5's limit); "truncate" cuts it as the reference does.
  """

  def __init__(self, text_encoder, byt5_encoder, siglip, tokenize, vae, *, frame_hw=None,
               resolution: str = "480p", on_overflow: str = "error"):
    from wc_jax.models.encoders import byt5_text, conditioning, image_resize
    if on_overflow not in ("error", "truncate"):
      raise ValueError(f"on_overflow must be 'error' or 'truncate', got {on_overflow!r}")
    if resolution not in image_resize.TARGET_SIZE_CONFIG:
      raise ValueError(f"resolution must be one of {sorted(image_resize.TARGET_SIZE_CONFIG)}, got {resolution!r}")
    self.text_encoder, self.byt5_encoder, self.siglip, self.vae = text_encoder, byt5_encoder, siglip, vae
    self.tokenize, self.frame_hw, self.resolution, self.on_overflow = tokenize, frame_hw, resolution, on_overflow
    self._cond, self._byt5_text, self._resize = conditioning, byt5_text, image_resize
    crop = conditioning.crop_start_for(tokenize)
    if crop != text_encoder.cfg.crop_start:
      raise ValueError(f"the tokenizer gives crop_start {crop} for the video template but the text encoder "
                       f"was built with {text_encoder.cfg.crop_start}: was it converted with another tokenizer?")
    self.crop_start = crop

  @property
  def dims(self) -> dict:
    """RecordSpec dimensions of what this encoder writes."""
    return dict(text_dim=int(self.text_encoder.cfg.lm.hidden_size), byt5_dim=int(self.byt5_encoder.cfg.d_model),
                vision_dim=int(self.siglip.cfg.hidden_size), latent_channels=int(self.vae.config.latent_channels))

  def check_prompt(self, prompt: str) -> None:
    """ValueError for a prompt over the limit (on_overflow='error')."""
    if self.on_overflow != "error":
      return
    c = self.text_encoder.cfg
    n = len(self._cond.template_token_ids(prompt, self.tokenize)) - self.crop_start
    if n > c.max_length:
      raise ValueError(f"the prompt is {n} tokens with the template tail, over the text encoder's limit of "
                       f"{c.max_length} (--on_overflow truncate cuts it, as the reference does)")
    glyph = self._byt5_text.format_glyph_texts(self._byt5_text.extract_glyph_texts(prompt))
    nb = len(glyph.encode("utf-8")) + 1
    if nb > self._byt5_text.MAX_LENGTH:
      raise ValueError(f"the quoted text is {nb} ByT5 tokens once formatted, over the limit of "
                       f"{self._byt5_text.MAX_LENGTH} (--on_overflow truncate cuts it, as the reference does)")

  def first_latent(self, image: np.ndarray) -> np.ndarray:
    """DiT-scale VAE latent [C, h, w] of the image resized to the frame size."""
    if self.frame_hw is not None:
      hw = tuple(self.frame_hw)
    else:
      base = self._resize.TARGET_SIZE_CONFIG[self.resolution]["bucket_hw_base_size"]
      hw = self._resize.closest_bucket(image.shape[0], image.shape[1], base, 16)
    frame = self._resize.resize_and_center_crop(self._resize.check_image(image), *hw)
    video = (np.asarray(frame, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
    return np.asarray(_vae_latent(self.vae, video), np.float32)[0, :, 0]

  def __call__(self, image: np.ndarray, prompt: str) -> dict:
    cond = self._cond
    self.check_prompt(prompt)
    text, tmask = cond.encode_text_prompts(self.text_encoder, [prompt], self.tokenize, cfg=False,
                                           on_overflow="truncate")
    byt5, bmask = cond.encode_glyph_prompts(self.byt5_encoder, [prompt], cfg=False)
    vision = cond.encode_reference_image(self.siglip, image, resolution=self.resolution, cfg=False)
    return dict(text_states=np.asarray(text, np.float32)[0], text_mask=np.asarray(tmask)[0].astype(bool),
                byt5_states=np.asarray(byt5, np.float32)[0], byt5_mask=np.asarray(bmask)[0].astype(bool),
                vision_states=np.asarray(vision, np.float32)[0], first_latent=self.first_latent(image))

  def negative(self, states: Mapping, negative_prompt: str = "") -> dict:
    """The CFG negative of `states` (this encoder's output for the positive prompt), as the
    pipeline builds it: the negative prompt through the text path ("" -> " "), ByT5 zeros with
    mask 0 whatever the prompt, the same image's SigLIP states and first latent."""
    text, tmask = self._cond.encode_text_prompts(self.text_encoder, [negative_prompt], self.tokenize, cfg=False,
                                                 on_overflow="truncate")
    byt5 = np.zeros_like(np.asarray(states["byt5_states"], np.float32))
    return dict(text_states=np.asarray(text, np.float32)[0], text_mask=np.asarray(tmask)[0].astype(bool),
                byt5_states=byt5, byt5_mask=np.zeros(byt5.shape[:1], bool),
                vision_states=np.asarray(states["vision_states"], np.float32),
                first_latent=np.asarray(states["first_latent"], np.float32))


def _vae_latent(vae, video):
  """`latent_dist.mode() * scaling_factor` of a video [1, 3, 1, H, W] in [-1, 1] (jitted once per shape)."""
  global _VAE_JIT
  if _VAE_JIT is None:
    from flax import nnx
    from wc_jax.models.vae import encode, scale_latents
    _VAE_JIT = nnx.jit(lambda m, v: scale_latents(m.config, encode(m, v).mode()))
  return _VAE_JIT(vae, video)


_VAE_JIT = None


def _need_path(flag: str, path: str | None) -> str:
  if not path:
    raise ValueError(f"the JAX encoder mode needs {flag} (a reference checkpoint folder or a wc_jax Orbax folder)")
  if "://" not in path and not os.path.exists(path):
    raise FileNotFoundError(f"{flag} {path}: no such file or folder")
  return path


def load_tokenizer(path: str) -> Callable[[str], list[int]]:
  """The Qwen2.5 BPE (plain text -> ids) from a checkpoint folder's tokenizer.json or the file."""
  from wc_jax.rewards.hpsv3 import load_tokenizer as load
  return load(path)


def build_vae(vae_path: str | None = None, config=None):
  """The VAE from `vae_path` (wc_jax Orbax or reference folder), else from a config's `vae`
  section (its checkpoint, or a seeded random init with model.latent_channels: smoke tests)."""
  if vae_path:
    from wc_jax.convert import kinds
    from wc_jax.convert.registry import load_model
    return load_model(kinds.VAE, _need_path("--vae", vae_path))
  if config is None:
    raise ValueError("the JAX encoder mode needs --vae PATH (a VAE checkpoint folder) or --config (its vae section)")
  from wc_jax.models import vae as vae_lib
  v = config.vae
  if v.checkpoint:
    return build_vae(v.checkpoint)
  print("write_records: warning: first latents from a RANDOM VAE (the config's vae.checkpoint is empty); "
        "fine for smoke tests, pass --vae for real records", file=sys.stderr)
  return vae_lib.init_model(vae_lib.VAEConfig(latent_channels=int(config.model.latent_channels),
                                              block_out_channels=tuple(v.block_out_channels),
                                              layers_per_block=int(v.layers_per_block)), seed=int(v.seed))


def jax_encoder(text_encoder: str, byt5: str, siglip: str, *, tokenizer: str | None = None, vae: str | None = None,
                config=None, frame_hw=None, resolution: str = "480p", on_overflow: str = "error",
                max_text_tokens: int | None = None, dtype: str | None = None,
                tokenize: Callable[[str], list[int]] | None = None, vae_model=None) -> JaxEncoder:
  """A JaxEncoder from checkpoint folders (reference layout, converted on the fly, or wc_jax
  Orbax). The tokenizer is `tokenizer` (tokenizer.json or its folder), else the text encoder
  folder's tokenizer.json; `tokenize` (a callable text -> ids) replaces both (tests, custom
  tokenizers). `max_text_tokens` (default the reference's 1000) applies when converting."""
  from wc_jax.convert import kinds
  from wc_jax.convert.encoders import load_encoder as load
  from wc_jax.models.encoders import conditioning
  for flag, path in (("--text_encoder", text_encoder), ("--byt5", byt5), ("--siglip", siglip)):
    _need_path(flag, path)
  if tokenize is None:
    tok_path = tokenizer or text_encoder
    if tokenizer:
      _need_path("--tokenizer", tokenizer)
    elif not os.path.isfile(os.path.join(text_encoder, "tokenizer.json")):
      raise FileNotFoundError(f"no tokenizer: {text_encoder} has no tokenizer.json; pass --tokenizer PATH "
                              "(the Qwen2.5-VL checkpoint's tokenizer.json or its folder)")
    tokenize = load_tokenizer(tok_path)
  crop = conditioning.crop_start_for(tokenize)
  wrapper = dict(crop_start=crop)
  if max_text_tokens:
    wrapper["max_length"] = int(max_text_tokens)
  text = load(kinds.QWEN25VL_TEXT, text_encoder, dtype=dtype, **wrapper)
  glyph = load(kinds.BYT5, byt5, dtype=dtype)
  vision = load(kinds.SIGLIP, siglip, dtype=dtype)
  vae_model = vae_model if vae_model is not None else build_vae(vae, config)
  return JaxEncoder(text, glyph, vision, tokenize, vae_model, frame_hw=frame_hw, resolution=resolution,
                    on_overflow=on_overflow)


def image_records(pairs, encoder, traj_fn, per_image: int = 1) -> Iterator[dict]:
  """Records for (image, caption[, pose string]) entries: encoder states + `per_image`
  trajectories each (an entry's own pose string replaces `traj_fn`; its length sets T).

  A failure on one input (unreadable image, bad prompt, encoder error) raises one line
  naming the record."""
  n = 0
  for k, item in enumerate(pairs):
    path, caption = item[0], item[1]
    actions = item[2] if len(item) > 2 else None
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"record {k:06d}_{stem} ({path})"
    try:
      image = load_image(path)
    except FileNotFoundError:
      raise FileNotFoundError(f"{name}: image not found") from None
    except Exception as e:   # PIL raises several types for a broken file
      raise ValueError(f"{name}: cannot read the image: {_one_line(e)}") from None
    try:
      states = encoder(image, caption)
      own = trajectories.trajectory_from_string(actions) if actions else None
    except (ValueError, TypeError) as e:
      raise ValueError(f"{name}: {_one_line(e)}") from None
    missing = [key for key in ENCODER_KEYS if key not in states]
    if missing:
      raise ValueError(f"the encoder's output for {path} misses {missing}; it must return "
                       f"{list(ENCODER_KEYS)}")
    for j in range(per_image):
      yield _record(f"{k:06d}_{stem}_t{j}", caption, states, own if own is not None else traj_fn(n))
      n += 1


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _record(rid: str, prompt: str, states: Mapping, tr: trajectories.Trajectory) -> dict:
  rec = {key: np.asarray(states[key]) for key in ENCODER_KEYS}
  rec.update(id=rid, prompt=prompt, actions=tr.actions.astype(np.int32), motions=tr.motions,
             w2c=tr.w2c, intrinsics=tr.intrinsics.astype(np.float32))
  return rec


# ----------------------------------------------------------------------------- reference .pt

def torch_load(path: str) -> dict:
  """Loads a reference .pt dict as NumPy (float tensors -> float32). Needs torch."""
  try:
    import torch
  except ImportError:
    raise ImportError("reading the reference's .pt files needs PyTorch (pip install torch); "
                      "the rest of wc_jax does not need it") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return {k: (v.float().numpy() if v.is_floating_point() else v.numpy()) if torch.is_tensor(v)
          else v for k, v in obj.items()}


def reference_states(pt: Mapping) -> dict:
  """The reference's .pt fields -> ENCODER_KEYS (batch axes dropped)."""
  need = ("prompt_embeds", "prompt_mask", "byt5_text_states", "byt5_text_mask", "vision_states")
  missing = [k for k in need if k not in pt]
  if "image_cond" not in pt and "latent" not in pt:
    missing.append("image_cond")
  if missing:
    raise ValueError(f"reference .pt misses fields {missing}")

  def squeeze(x, ndim):
    x = np.asarray(x)
    while x.ndim > ndim and x.shape[0] == 1:
      x = x[0]
    if x.ndim != ndim:
      raise ValueError(f"reference .pt: expected a {ndim}-D array (after dropping batch axes), "
                       f"got shape {x.shape}")
    return x

  lat = np.asarray(pt["image_cond"] if "image_cond" in pt else pt["latent"])
  lat = squeeze(lat, 4)[:, 0]           # [C,T,H,W] -> first latent frame [C,H,W]
  return dict(text_states=squeeze(pt["prompt_embeds"], 2), text_mask=squeeze(pt["prompt_mask"], 1),
              byt5_states=squeeze(pt["byt5_text_states"], 2),
              byt5_mask=squeeze(pt["byt5_text_mask"], 1),
              vision_states=squeeze(pt["vision_states"], 2), first_latent=lat)


def reference_records(latents_json: str, traj_fn, load_fn=torch_load) -> Iterator[dict]:
  """Records from the reference's latents.json ({"latent_path", "caption"} per item)."""
  with open(latents_json) as f:
    items = json.load(f)
  if not isinstance(items, list) or not items:
    raise ValueError(f"{latents_json} must hold a non-empty list of {{'latent_path', 'caption'}}")
  for n, item in enumerate(items):
    if "latent_path" not in item:
      raise ValueError(f"{latents_json} item {n} has no 'latent_path'")
    states = reference_states(load_fn(item["latent_path"]))
    stem = os.path.splitext(os.path.basename(item["latent_path"]))[0]
    yield _record(f"{n:06d}_{stem}", str(item.get("caption", "")), states, traj_fn(n))


# ----------------------------------------------------------------------------- CLI

def _spec_from_states(states: Mapping, with_video=False, state_dtype="float32"):
  return tfds_builder.RecordSpec(
      text_dim=int(np.shape(states["text_states"])[-1]),
      byt5_dim=int(np.shape(states["byt5_states"])[-1]),
      vision_dim=int(np.shape(states["vision_states"])[-1]),
      latent_channels=int(np.shape(states["first_latent"])[0]),
      state_dtype=state_dtype, with_video=with_video)


def _load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("wc_jax_records_config", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _parse_kv(items: Iterable[str]) -> dict:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--encoder_arg must be key=value, got {item!r}")
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def _split_counts(total: int, test: int) -> dict[str, tuple[int, int]]:
  if not 0 <= test < total:
    raise ValueError(f"--test_examples ({test}) must be in [0, num_examples={total})")
  out = {"train": (0, total - test)}
  if test:
    out["test"] = (total - test, total)
  return out


def write_synthetic(out: str, name: str, spec: tfds_builder.RecordSpec,
                    config: synthetic_world.SyntheticConfig, test_examples: int = 0) -> str:
  """Renders the synthetic world into a record set; returns its folder."""
  source = synthetic_world.SyntheticRecords(config, spec)

  def split(lo, hi):
    return lambda: (source[i] for i in range(lo, hi))
  splits = {k: split(*v) for k, v in _split_counts(len(source), test_examples).items()}
  return tfds_builder.write_dataset(out, name, spec, splits,
                                    description=f"synthetic world: {config}")


def _jax_encoder_from_args(a, tokenize=None) -> JaxEncoder:
  for flag, path in (("--text_encoder", a.text_encoder), ("--byt5", a.byt5), ("--siglip", a.siglip)):
    _need_path(flag, path)                 # every missing path before any loading
  if a.tokenizer:
    _need_path("--tokenizer", a.tokenizer)
  cfg = _load_config(a.config) if a.config else None
  frame_hw = None
  if a.height or a.width:
    if not (a.height and a.width):
      raise ValueError("--height and --width go together")
    frame_hw = (a.height, a.width)
  vae = build_vae(a.vae, cfg)
  if cfg is not None and int(vae.config.latent_channels) != int(cfg.model.latent_channels):
    raise ValueError(f"the VAE has {vae.config.latent_channels} latent channels, the config's DiT "
                     f"{cfg.model.latent_channels}")
  if frame_hw is None and cfg is not None:
    f = int(vae.config.ffactor_spatial)
    frame_hw = (int(cfg.sampling.latent_height) * f, int(cfg.sampling.latent_width) * f)
  enc = jax_encoder(a.text_encoder, a.byt5, a.siglip, tokenizer=a.tokenizer, vae=None, config=None,
                    frame_hw=frame_hw, resolution=a.resolution, on_overflow=a.on_overflow,
                    max_text_tokens=a.max_text_tokens or None, dtype=a.encoder_dtype, tokenize=tokenize,
                    vae_model=vae)
  return enc


def main(argv=None, *, tokenize: Callable[[str], list[int]] | None = None) -> str:
  """The CLI. `tokenize` (text -> Qwen2.5 ids) replaces --tokenizer: a hook for tests and
  custom tokenizers; it selects the JAX encoder mode."""
  p = argparse.ArgumentParser(prog="python -m wc_jax.data.write_records", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="mode", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--out", required=True, help="TFDS data dir")
  common.add_argument("--name", required=True, help="record set name (letters, digits, _)")
  common.add_argument("--num_latents", type=int, default=64)
  common.add_argument("--seed", type=int, default=0, help="first random-trajectory seed")
  common.add_argument("--state_dtype", default="float32", choices=tfds_builder.STATE_DTYPES)
  s = sub.add_parser("synthetic", parents=[common], help="render the synthetic world")
  s.add_argument("--config", default="configs/tiny.py", help="config whose model/text dims to use")
  s.add_argument("--num_examples", type=int, default=64)
  s.add_argument("--test_examples", type=int, default=0)
  s.add_argument("--num_scenes", type=int, default=4)
  s.add_argument("--scene_seed", type=int, default=0)
  s.add_argument("--height", type=int, default=64)
  s.add_argument("--width", type=int, default=96)
  s.add_argument("--supersample", type=int, default=1)
  for mode in ("images", "reference-pt"):
    q = sub.add_parser(mode, parents=[common])
    q.add_argument("--trajectory", default="random", help="'random' or a pose string")
    q.add_argument("--poses", default=None, help="reference pose JSON (overrides --trajectory)")
    if mode == "images":
      q.add_argument("--images", required=True,
                     help="folder: images + prompts.jsonl / captions.json(l) / <stem>.txt")
      q.add_argument("--per_image", type=int, default=1, help="trajectories per image")
      q.add_argument("--encoder", default=None, help="a Python encoder: module:factory")
      q.add_argument("--encoder_arg", action="append", default=[], help="key=value (JSON value)")
      j = q.add_argument_group("JAX encoders (instead of --encoder): checkpoint folders, reference "
                               "layout (config.json + safetensors) or wc_jax Orbax")
      j.add_argument("--text_encoder", default=None, help="Qwen2.5-VL(-7B-Instruct) folder")
      j.add_argument("--byt5", default=None, help="ByT5 / Glyph-SDXL-v2 byt5 folder")
      j.add_argument("--siglip", default=None, help="SigLIP vision tower folder")
      j.add_argument("--tokenizer", default=None,
                     help="Qwen2.5 tokenizer.json or its folder (default: the text encoder folder)")
      j.add_argument("--vae", default=None, help="VAE folder for the first latents "
                     "(default: --config's vae section)")
      j.add_argument("--config", default=None,
                     help="config whose vae section and latent grid to use (e.g. configs/hunyuan8b.py)")
      j.add_argument("--height", type=int, default=0, help="first-frame pixels for the VAE (0: the "
                     "config's latent grid x VAE factor, else the image's --resolution bucket)")
      j.add_argument("--width", type=int, default=0)
      j.add_argument("--resolution", default="480p", help="bucket set for SigLIP (and the VAE frame)")
      j.add_argument("--max_text_tokens", type=int, default=0,
                     help="text length kept after the template (0: the reference's 1000)")
      j.add_argument("--encoder_dtype", default=None, choices=("float32", "bfloat16"),
                     help="compute dtype of the encoders (default: as stored)")
      j.add_argument("--on_overflow", default="error", choices=("error", "truncate"),
                     help="a prompt over the limit: stop naming the record, or cut it (the reference)")
    else:
      q.add_argument("--latents_json", required=True)
  a = p.parse_args(argv)

  if a.mode == "synthetic":
    cfg = _load_config(a.config)
    t = cfg.text
    sc = synthetic_world.SyntheticConfig(
        num_examples=a.num_examples, num_scenes=a.num_scenes, scene_seed=a.scene_seed,
        trajectory_seed=a.seed, num_latents=a.num_latents, height=a.height, width=a.width,
        supersample=a.supersample, text_tokens=t.text_tokens, byt5_tokens=t.byt5_tokens,
        vision_tokens=t.vision_tokens)
    spec = tfds_builder.RecordSpec.from_model_config(cfg.model, with_video=True,
                                                     state_dtype=a.state_dtype)
    path = write_synthetic(a.out, a.name, spec, sc, a.test_examples)
  else:
    traj_fn = trajectory_source(a.trajectory, a.num_latents, a.seed, a.poses)
    spec = None
    if a.mode == "images":
      pairs = list_images(a.images)
      jax_mode = any((a.text_encoder, a.byt5, a.siglip)) or tokenize is not None
      if jax_mode and a.encoder:
        raise ValueError("--encoder and the JAX encoders (--text_encoder, --byt5, --siglip) exclude each other")
      if jax_mode:
        encoder = _jax_encoder_from_args(a, tokenize)
        spec = tfds_builder.RecordSpec(**encoder.dims, state_dtype=a.state_dtype)
      elif a.encoder:
        encoder = load_encoder(a.encoder, _parse_kv(a.encoder_arg))
      else:
        raise ValueError("images: pass the JAX encoders (--text_encoder, --byt5, --siglip) or --encoder "
                         "module:factory")
      make = lambda: image_records(pairs, encoder, traj_fn, a.per_image)  # noqa: E731
    else:
      make = lambda: reference_records(a.latents_json, traj_fn)  # noqa: E731
    if spec is None:
      first = next(iter(make()))
      spec = _spec_from_states(first, state_dtype=a.state_dtype)
    path = tfds_builder.write_dataset(a.out, a.name, spec, {"train": make},
                                      description=f"{a.mode} records")
  print(path)
  return path


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (FileNotFoundError, ValueError, TypeError) as e:   # one line, no traceback
    sys.exit(f"write_records: error: {_one_line(e)}")
