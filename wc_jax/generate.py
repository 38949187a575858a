"""Autoregressive generation with the WorldPlay DiT (random-init tiny model or a converted checkpoint).

    python -m wc_jax.generate --config=configs/tiny.py --workdir=/tmp/wc_tiny
    python -m wc_jax.generate --config=configs/hunyuan8b.py --config.model.checkpoint=/ckpt/ar_model

Writes WORKDIR/latents.npz (final latents, context choices, camera trajectory) and
WORKDIR/latents.gif (the first three latent channels of every frame, for a quick look).
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from wc_jax import cli
from wc_jax.convert import kinds, load_model
from wc_jax.inference import ChunkEngine, i2v_condition
from wc_jax.rl import config as run_config
from wc_jax.progress import phase
from wc_jax.models.worldplay.config import DiTConfig, from_config
from wc_jax.models.worldplay.model import build, functional, randomize

_CONFIG = cli.config_flag("configs/tiny.py")
_WORKDIR = cli.string_flag("workdir", "/tmp/wc_jax_generate", "where outputs are written")


def simple_trajectory(n: int, step: float = 0.1, yaw_deg: float = 2.0):
  """w2c poses [n,4,4] and action labels [n] for 'forward, then forward+yaw right' (OpenCV axes)."""
  c2w = [np.eye(4)]
  labels = [0]
  for i in range(1, n):
    yaw = np.radians(yaw_deg) if i >= n // 2 else 0.0
    rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rel = np.eye(4)
    rel[:3, :3] = rot
    rel[:3, 3] = [0, 0, step]
    c2w.append(c2w[-1] @ rel)
    labels.append(1 * 9 + (1 if yaw else 0))   # trans forward (1), rot yaw-right (1)
  w2c = np.stack([np.linalg.inv(m) for m in c2w]).astype(np.float32)
  return w2c, np.asarray(labels, np.float32)


def synthetic_conditioning(cfg, mcfg: DiTConfig, rng: np.random.Generator):
  """Random stand-ins for the text/ByT5/SigLIP encoder states (no encoders at this scale)."""
  t = cfg.text
  return dict(text_states=rng.standard_normal((1, t.text_tokens, mcfg.text_dim), np.float32),
              encoder_attention_mask=(np.arange(t.text_tokens) < max(1, t.text_tokens * 3 // 4))[None].astype(np.int32),
              byt5_text_states=rng.standard_normal((1, t.byt5_tokens, mcfg.byt5_in_dim), np.float32),
              byt5_text_mask=(np.arange(t.byt5_tokens) < max(1, t.byt5_tokens // 2))[None].astype(np.int32),
              vision_states=rng.standard_normal((1, t.vision_tokens, mcfg.vision_dim), np.float32))


def write_gif(latents: np.ndarray, path: pathlib.Path, scale: int = 8) -> None:
  from PIL import Image
  x = latents[0, :3]                                   # [3, T, H, W]
  lo, hi = np.percentile(x, 1), np.percentile(x, 99)
  x = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
  frames = [Image.fromarray((np.transpose(x[:, i], (1, 2, 0)) * 255).astype(np.uint8)).resize(
      (x.shape[3] * scale, x.shape[2] * scale), Image.NEAREST) for i in range(x.shape[1])]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0)


def build_model(cfg, mcfg: DiTConfig):
  """The DiT of `cfg.model`: a converted checkpoint (the run's model config wins, shapes are
  checked) or a random init seeded with cfg.seed."""
  if cfg.model.checkpoint:
    with phase("loading the WorldPlay DiT", cfg.model.checkpoint):
      return load_model(kinds.DIT, cfg.model.checkpoint, **mcfg.to_dict())
  with phase("building the WorldPlay DiT", f"{mcfg.hidden_size} wide, {mcfg.depth} blocks"):
    model = build(mcfg, seed=cfg.seed)
    if cfg.model.get("init", "reference") == "random":
      randomize(model, cfg.seed)   # the reference zero-inits output layers: a fresh model predicts v = 0
  return model


def encode_conditioning(model, conds: dict):
  """TextTokens of the conditioning states (`synthetic_conditioning`)."""
  return model.encode_text(*(jnp.asarray(conds[k]) for k in ("text_states", "encoder_attention_mask",
                                                             "byt5_text_states", "byt5_text_mask",
                                                             "vision_states")), jnp.zeros((1,)))


def make_inputs(cfg, mcfg: DiTConfig) -> dict:
  """The generation inputs, all drawn from `np.random.default_rng(cfg.seed)` in this order:
  initial noise [1, C, T, h, w], first-frame latent [1, C, h, w], conditioning states."""
  rng = np.random.default_rng(cfg.seed)
  s = cfg.sampling
  t = s.chunks * mcfg.chunk_latents
  c = mcfg.latent_channels
  latents = rng.standard_normal((1, c, t, s.latent_height, s.latent_width)).astype(np.float32)
  first = rng.standard_normal((1, c, s.latent_height, s.latent_width)).astype(np.float32)
  w2c, labels = simple_trajectory(t)
  Ks = np.tile(np.array([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]], np.float32), (1, t, 1, 1))
  return dict(latents=latents, first_latent=first, cond=np.asarray(i2v_condition(first, t)), w2c=w2c,
              actions=labels, Ks=Ks, conditioning=synthetic_conditioning(cfg, mcfg, rng))


def make_engine(apply, cfg, mcfg: DiTConfig) -> ChunkEngine:
  """The chunk engine of `cfg.sampling` (retrieval points seeded with cfg.seed, as before)."""
  return ChunkEngine.from_config(apply, cfg, retrieval_seed=cfg.seed)


def run(cfg, workdir: str) -> dict:
  run_config.validate(cfg, required=run_config.GENERATE_SECTIONS)
  run_config.check_workdir(workdir)
  mcfg = from_config(cfg.model)
  workdir = pathlib.Path(workdir)
  model = build_model(cfg, mcfg)
  workdir.mkdir(parents=True, exist_ok=True)
  apply, state = functional(model)
  s = cfg.sampling
  inputs = make_inputs(cfg, mcfg)
  t = inputs["latents"].shape[2]
  conds = inputs["conditioning"]
  text = encode_conditioning(model, conds)
  engine = make_engine(apply, cfg, mcfg)
  w2c, labels = inputs["w2c"], inputs["actions"]
  t0 = time.time()
  with phase("sampling", f"{s.chunks} chunks x {s.steps} steps"):
    out = engine.generate(state, latents=inputs["latents"], cond=inputs["cond"], viewmats=w2c[None],
                          Ks=inputs["Ks"], action=labels[None], text=text)
    out.latents = np.asarray(out.latents)
  secs = time.time() - t0
  np.savez(workdir / "latents.npz", latents=out.latents, viewmats=w2c, actions=labels)
  write_gif(out.latents, workdir / "latents.gif")
  summary = {"chunks": s.chunks, "latent_frames": t, "steps": s.steps, "model_passes": out.model_passes,
             "context_indices": out.context_indices, "seconds": round(secs, 2),
             "finite": bool(np.isfinite(out.latents).all()), "devices": [str(d) for d in jax.devices()]}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  summary = run(_CONFIG(), _WORKDIR())
  print(json.dumps(summary, indent=2))
  print(f"wrote {_WORKDIR()}/latents.npz, latents.gif, summary.json")


if __name__ == "__main__":
  cli.run(main)
