"""Writes trajectory records (TFDS array_record) for RL post-training.

    # the synthetic world (no encoders needed; dims from a config)
    python -m wc_jax.data.write_records synthetic --out /data/wc --name synth_tiny \\
        --config configs/tiny.py --num_examples 256 --num_latents 16

    # a folder of images + captions, encoded by your encoders (any Python callable)
    python -m wc_jax.data.write_records images --images /data/imgs --out /data/wc --name mine \\
        --encoder my_pkg.encoders:make_encoder --encoder_arg ckpt=/ckpt/hunyuan --trajectory random

    # the reference's precomputed .pt files (prepare_image_text_latent_simple.py); needs torch
    python -m wc_jax.data.write_records reference-pt --latents_json /prep/latents.json \\
        --out /data/wc --name mine --poses /prep/harder_random_poses.json

Every example pairs one image's conditioning with one trajectory: `random`
(the reference generator, seed = --seed + example index), a pose string
("w-15, right-16"), or the reference's pose JSON (`--poses`, used round-robin
like its dataset). See docs/data.md for the record fields.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from wc_jax.data import synthetic_world, tfds_builder, trajectories

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ENCODER_KEYS = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states",
                "first_latent")

# ----------------------------------------------------------------------------- inputs


def list_images(folder: str) -> list[tuple[str, str]]:
  """(image path, caption) pairs of a folder.

  Captions come from `captions.json` (the reference's input format: a list of
  {"image_path", "caption"}), `captions.jsonl` (one such object per line), or
  a `<image stem>.txt` beside each image, in that order of preference.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"list_images: {folder} is not a folder")
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
  pairs = []
  if entries is not None:
    for n, e in enumerate(entries):
      if not isinstance(e, Mapping) or "image_path" not in e or "caption" not in e:
        raise ValueError(f"captions entry {n} must have 'image_path' and 'caption', got {e!r}")
      p = os.path.join(folder, e["image_path"])   # an absolute image_path stays as it is
      if not os.path.isfile(p):
        raise FileNotFoundError(f"captions entry {n}: image {p} not found")
      pairs.append((p, str(e["caption"])))
  else:
    for name in sorted(os.listdir(folder)):
      if not name.lower().endswith(IMAGE_SUFFIXES):
        continue
      txt = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
      if not os.path.isfile(txt):
        raise FileNotFoundError(f"list_images: no caption for {name}: add {txt} or a "
                                f"captions.json")
      with open(txt) as f:
        pairs.append((os.path.join(folder, name), f.read().strip()))
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


def image_records(pairs, encoder, traj_fn, per_image: int = 1) -> Iterator[dict]:
  """Records for (image, caption) pairs: encoder states + `per_image` trajectories each."""
  n = 0
  for k, (path, caption) in enumerate(pairs):
    states = encoder(load_image(path), caption)
    missing = [key for key in ENCODER_KEYS if key not in states]
    if missing:
      raise ValueError(f"the encoder's output for {path} misses {missing}; it must return "
                       f"{list(ENCODER_KEYS)}")
    stem = os.path.splitext(os.path.basename(path))[0]
    for j in range(per_image):
      yield _record(f"{k:06d}_{stem}_t{j}", caption, states, traj_fn(n))
      n += 1


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


def main(argv=None) -> str:
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
      q.add_argument("--images", required=True)
      q.add_argument("--encoder", required=True, help="module:factory")
      q.add_argument("--encoder_arg", action="append", default=[], help="key=value (JSON value)")
      q.add_argument("--per_image", type=int, default=1, help="trajectories per image")
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
    if a.mode == "images":
      encoder = load_encoder(a.encoder, _parse_kv(a.encoder_arg))
      pairs = list_images(a.images)
      make = lambda: image_records(pairs, encoder, traj_fn, a.per_image)  # noqa: E731
    else:
      make = lambda: reference_records(a.latents_json, traj_fn)  # noqa: E731
    first = next(iter(make()))
    spec = _spec_from_states(first, state_dtype=a.state_dtype)
    path = tfds_builder.write_dataset(a.out, a.name, spec, {"train": make},
                                      description=f"{a.mode} records")
  print(path)
  return path


if __name__ == "__main__":
  main(sys.argv[1:])
