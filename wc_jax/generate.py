"""A video from a first frame and commanded camera actions, with the WorldPlay DiT.

    python -m wc_jax.generate --config=configs/tiny.py --image=first.png --actions="w-8, right-4, d-8" \\
        --states=my_states.npz --out=/tmp/wc/video.mp4
    python -m wc_jax.generate --config=configs/hunyuan8b.py --checkpoint=/runs/wc --which=ema \\
        --image=first.png --pose=poses.json --frames=125 --states=/data/wc/wc_trajectories/mine/1.0.0 \\
        --out=video.mp4

What goes in:
  first frame   --image (resized and centre-cropped to the config's size, VAE-encoded into the
                image-to-video condition); without --image, the `first_latent` of the --states
                file (a record written by write_records carries the VAE latent of its image);
                random only with --random_conditioning.
  prompt        --prompt "..." with --text_encoder --byt5 --siglip [--tokenizer]: the prompt and --image
                through the JAX encoders exactly as write_records encodes a record (`encode_prompt`);
                with --guidance > 1 the CFG negative from --negative_prompt (default "", the reference's).
  conditioning  --states: the text / ByT5 / SigLIP encoder states of the prompt, from a record set
                written by `python -m wc_jax.data.write_records` (--record picks the example) or an
                .npz with text_states, byt5_states, vision_states (+ text_mask, byt5_mask,
                first_latent). --random_conditioning draws random states instead (a warning says so).
  camera        --actions "w-8, right-4, d-8" (the reference's pose strings; w/s/a/d move, left/
                right/up/down turn, '+' combines) or --pose poses.json (the reference's pose JSON);
                default: straight forward. --frames sets the length (4T-3 frames for T latents, T a
                multiple of the chunk); without it the actions' length, rounded up to whole chunks
                with the camera at rest.
  model         the config's model: random init at the tiny config, or --checkpoint (an RL run:
                WORKDIR[/checkpoints[/STEP]] with --which=ema|raw|policy; a folder written by
                python -m wc_jax.convert; or a reference folder).
  mode          --mode=ar (default: AR chunks, FOV context, K/V caches) or --mode=bidirectional (the
                reference's bi_rollout: full-attention chunks of --bi_chunk latents beside their
                retrieved context; wc_jax.inference.bidirectional).
  guidance      --guidance=g > 1: classifier-free guidance against --negative_states (the
                reference's negative prompt, encoded like --states): v = v_neg + g (v - v_neg).

What comes out (written under temporary names, then renamed: nothing half-written is left):
  OUT.mp4 (the commanded action burned into the top-left corner), OUT.npy (the final latents
  [1, C, T, h, w]) and OUT.json (settings, context choices, timings).

Chunks run through the one `ChunkEngine` (FOV context retrieval), sharded over the config's mesh;
the VAE decodes chunk by chunk with its causal cache, so memory does not grow with the length.

LingBot-World: a config with family = "lingbot" (configs/lingbot_tiny.py, lingbot_a14b.py) goes
to `generate_lingbot` (wc_jax.inference.lingbot: two experts, UniPC + CFG, the Wan2.1 VAE):

    python -m wc_jax.generate --config=configs/lingbot_tiny.py --image=first.png \\
        --prompt="a walk along a stone path" --actions="w-4, right-4" --out=video.mp4
    python -m wc_jax.generate --config=configs/lingbot_a14b.py --image=first.png --poses=poses.npy \\
        --intrinsics=intrinsics.npy --frames=81 --prompt="..." --out=video.mp4 \\
        --config.text_encoder.checkpoint=models_t5_umt5-xxl-enc-bf16.pth \\
        --config.text_encoder.tokenizer=google/umt5-xxl

  --prompt and the config's text_encoder.negative_prompt (or --negative_prompt) go through the
  config's umT5 encoder (text_encoder section: `umt5_from_config`, `umt5.encode_prompts`), which
  is dropped before the experts are built; or --states is an .npz of umT5 outputs (text_states,
  negative_states). The camera is the reference's poses.npy / intrinsics.npy or our action
  strings (`poses_from_actions`), the weights the config's model.checkpoint_low/high and
  vae.checkpoint (random full-size weights are refused without --allow_random_weights /
  --random_conditioning).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from wc_jax import cli, sharding
from wc_jax.actions import split_action
from wc_jax.convert import dit as dit_convert
from wc_jax.convert import kinds, load_model
from wc_jax.convert.common import ConversionError, as_path
from wc_jax.data import trajectories
from wc_jax.inference import ChunkEngine, i2v_condition
from wc_jax.inference.sampling import euler
from wc_jax.models.worldplay.config import DiTConfig, from_config
from wc_jax.models.worldplay.model import build, functional, randomize
from wc_jax.progress import phase
from wc_jax.rl import config as run_config

log = logging.getLogger("wc_jax.generate")

STATE_KEYS = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states")
# the 81-way label as the pose-string keys that command it (translation x rotation)
TRANS_KEYS = ("", "w", "s", "d", "a", "w+d", "w+a", "s+d", "s+a")
ROT_KEYS = ("", "right", "left", "up", "down", "right+up", "right+down", "left+up", "left+down")


_flag = cli.flag
BI_CHUNK = 16                 # the reference's chunk_latent_frames for model_type="bi"
BI_MAX_LATENTS = 64           # default sampling.bi_max_latents: the reference's bi windows stay under 48
MODES = ("ar", "bidirectional")


_CONFIG = cli.config_flag("configs/tiny.py")
_OUT = _flag("string", "out", "/tmp/wc_jax_generate/video.mp4", "output video (.mp4); OUT.npy and OUT.json beside it")
_IMAGE = _flag("string", "image", "", "first frame (any image PIL reads)")
_ACTIONS = _flag("string", "actions", "", 'camera actions, e.g. "w-8, right-4, d-8"')
_POSE = _flag("string", "pose", "", "reference pose JSON (instead of --actions)")
_FRAMES = _flag("integer", "frames", 0, "video frames (4T-3, T a multiple of the chunk); 0 = from the actions")
_SEED = _flag("integer", "seed", None, "noise seed (default: the config's seed)")
_STATES = _flag("string", "states", "", "encoder states: a write_records record set folder or an .npz")
_RECORD = _flag("integer", "record", 0, "which example of a --states record set")
_RANDOM = _flag("bool", "random_conditioning", False, "random encoder states / first latent (smoke tests)")
_CHECKPOINT = _flag("string", "checkpoint", "", "DiT weights: RL run, convert folder or reference folder")
_GUIDANCE = _flag("float", "guidance", None, "classifier-free guidance scale (WorldPlay default 1 = off; "
                  "LingBot default: the config's sampling.guide_scale)")
_NEGATIVE = _flag("string", "negative_states", "", "negative-prompt states for --guidance (like --states)")
_FPS = _flag("integer", "fps", 24, "frames per second of the mp4")
_DECODE = _flag("integer", "decode_latents", 1, "latents per VAE decode call (1: the reference's schedule, least memory)")
_OVERWRITE = _flag("bool", "overwrite", False, "replace existing output files")
_POSES = _flag("string", "poses", "", "LingBot: camera-to-world poses [N, 4, 4] (.npy, or a folder with poses.npy "
               "and intrinsics.npy, as the reference's --action_path)")
_INTRINSICS = _flag("string", "intrinsics", "", "LingBot: intrinsics [N or 1, 4] fx, fy, cx, cy at 480x832 (.npy)")
_ALLOW_RANDOM = _flag("bool", "allow_random_weights", False,
                      "LingBot: run a full-size config on random weights when checkpoints are missing")
_PROMPT = _flag("string", "prompt", "", "text prompt, encoded by the JAX encoders (WorldPlay: --text_encoder, --byt5, "
                "--siglip; LingBot: the config's umT5 text_encoder section)")
_NEG_PROMPT = _flag("string", "negative_prompt", None, "negative prompt for CFG (WorldPlay: with --guidance > 1, "
                    "default the reference's empty prompt; LingBot: default text_encoder.negative_prompt)")
_TEXT_ENCODER = _flag("string", "text_encoder", "", "Qwen2.5-VL(-7B-Instruct) folder (reference layout or wc_jax Orbax)")
_BYT5 = _flag("string", "byt5", "", "ByT5 / Glyph-SDXL-v2 byt5 folder")
_SIGLIP = _flag("string", "siglip", "", "SigLIP vision tower folder")
_TOKENIZER = _flag("string", "tokenizer", "", "Qwen2.5 tokenizer.json or its folder (default: the text encoder folder)")
_MAX_TEXT = _flag("integer", "max_text_tokens", 0, "text tokens kept after the template (0: the reference's 1000)")
_MODE = _flag("string", "mode", "ar", "ar: chunked autoregressive with FOV context (the AR model) | bidirectional: "
              "the reference's bi_rollout (full attention over context + chunk, the bidirectional model)")
_BI_CHUNK = _flag("integer", "bi_chunk", BI_CHUNK, "bidirectional: latents per chunk (the reference: 16; 0: the "
                  "whole clip in one pass)")
if "which" not in flags.FLAGS:
  flags.DEFINE_enum("which", "ema", tuple(dit_convert.RL_WHICH), "RL checkpoint weights: ema | raw | policy")
_WHICH = lambda: flags.FLAGS.which  # noqa: E731


class GenerateError(cli.UsageError):
  """Bad input to generation: one line, nothing written."""


# ----------------------------------------------------------------------------- inputs

def chunk_frames(chunk: int, k: int) -> int:
  """Frames of k chunks of `chunk` latents."""
  return 4 * k * chunk - 3


def make_trajectory(mcfg: DiTConfig, *, actions: str = "", pose: str = "", frames: int = 0):
  """(Trajectory of T latents, T a multiple of the chunk, what was done to fit it)."""
  chunk = mcfg.chunk_latents
  if actions and pose:
    raise GenerateError("give --actions or --pose, not both")
  want = None
  if frames:
    ok = frames >= 1 and (frames + 3) % 4 == 0 and ((frames + 3) // 4) % chunk == 0
    if not ok:
      k = max(1, round((frames + 3) / (4 * chunk)))
      near = sorted({chunk_frames(chunk, max(1, k - 1)), chunk_frames(chunk, k), chunk_frames(chunk, k + 1)})
      raise GenerateError(f"--frames={frames}: the VAE makes 4T-3 frames from T latents and the model generates "
                          f"chunks of {chunk} latents, so frames must be {chunk_frames(chunk, 1)}, "
                          f"{chunk_frames(chunk, 2)}, ... (nearest: {', '.join(map(str, near))})")
    want = (frames + 3) // 4
  note = ""
  if pose:
    try:
      trajs = trajectories.load_pose_json(pose)
    except (OSError, ValueError) as e:
      raise GenerateError(f"--pose={pose}: {e}") from None
    traj = trajs[0]
    have = traj.num_latents
    if want is None:
      want = (have // chunk) * chunk
      if want == 0:
        raise GenerateError(f"--pose={pose} has {have} poses; one chunk needs {chunk}")
      note = f"first {want} of the pose file's {have} poses (whole chunks)" if want < have else ""
    elif want > have:
      raise GenerateError(f"--frames={frames} needs {want} camera poses (one per latent) but --pose={pose} has "
                          f"only {have} ({4 * have - 3} frames): ask for at most "
                          f"{chunk_frames(chunk, have // chunk)} frames")
    return traj.window(0, want), note
  text = actions or (f"w-{(want or chunk) - 1}" if (want or chunk) > 1 else "")
  try:
    motions = [{}] + (trajectories.parse_action_string(text) if text else [])
  except ValueError as e:
    raise GenerateError(f"--actions={actions!r}: {e}") from None
  if want is None:
    want = -(-len(motions) // chunk) * chunk
    if want > len(motions):
      note = f"{want - len(motions)} latents at rest appended to fill the last chunk"
  elif len(motions) > want:
    raise GenerateError(f"--actions={actions!r} command {len(motions)} latents ({4 * len(motions) - 3} frames), "
                        f"more than --frames={frames} ({want} latents); drop --frames or shorten the actions")
  elif len(motions) < want:
    note = f"{want - len(motions)} latents at rest appended to reach --frames={frames}"
  motions = motions + [{}] * (want - len(motions))
  return trajectories.trajectory_from_motions(motions), note


def _bf16_states(x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == np.uint16:        # bfloat16 records store the bit patterns
    import ml_dtypes
    x = x.view(ml_dtypes.bfloat16)
  return x.astype(np.float32)


def load_states(path: str, mcfg: DiTConfig, record: int = 0, what: str = "--states") -> dict:
  """Encoder states (batch 1) and, when present, first_latent [1, C, h, w] from a record set
  folder (write_records) or an .npz."""
  p = pathlib.Path(path)
  if p.is_dir():
    from wc_jax.data import tfds_builder
    try:
      src = tfds_builder.open_split(str(p), "train")
    except (FileNotFoundError, ValueError) as e:
      raise GenerateError(f"{what}={path}: {e}") from None
    if not 0 <= record < len(src):
      raise GenerateError(f"{what}={path} has {len(src)} records; --record={record} is out of range")
    raw = dict(src[record])
    raw["text_states"], raw["byt5_states"], raw["vision_states"] = (
        _bf16_states(raw[k]) for k in ("text_states", "byt5_states", "vision_states"))
    source = f"record {record} ({raw['id'].decode() if isinstance(raw['id'], bytes) else raw['id']}) of {path}"
  elif p.is_file():
    try:
      with np.load(p) as z:
        raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
      raise GenerateError(f"{what}={path}: not a readable .npz ({e})") from None
    source = str(path)
  else:
    raise GenerateError(f"{what}={path}: no such file or record set folder")
  return states_from_raw(raw, mcfg, source, f"{what}={path}")


def states_from_raw(raw, mcfg: DiTConfig, source: str, what: str) -> dict:
  """Checked batch-1 float32 states (+ int masks, first_latent when present) from a record,
  an .npz or the JAX encoders' output; `what` names the input in errors."""
  missing = [k for k in ("text_states", "byt5_states", "vision_states") if k not in raw]
  if missing:
    raise GenerateError(f"{what} lacks {', '.join(missing)} (has {sorted(raw)})")
  out = {}
  for key, dim in (("text_states", mcfg.text_dim), ("byt5_states", mcfg.byt5_in_dim),
                   ("vision_states", mcfg.vision_dim)):
    x = _bf16_states(raw[key])
    x = x[None] if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[0] != 1 or x.shape[-1] != dim:
      raise GenerateError(f"{what}: {key} has shape {list(np.shape(raw[key]))}, the model needs "
                          f"[tokens, {dim}]")
    out[key] = x
  for key, ref in (("text_mask", "text_states"), ("byt5_mask", "byt5_states")):
    m = np.asarray(raw[key]) if key in raw else np.ones(out[ref].shape[1], bool)
    out[key] = (m[None] if m.ndim == 1 else m).astype(np.int32)
  if "first_latent" in raw:
    f = np.asarray(raw["first_latent"], np.float32)
    out["first_latent"] = f[None] if f.ndim == 3 else f
  out["source"] = source
  return out


def random_states(cfg, mcfg: DiTConfig, rng: np.random.Generator) -> dict:
  """Random stand-ins for the encoder states (smoke tests; the video means nothing)."""
  t = cfg.text
  return dict(text_states=rng.standard_normal((1, t.text_tokens, mcfg.text_dim), np.float32),
              text_mask=(np.arange(t.text_tokens) < max(1, t.text_tokens * 3 // 4))[None].astype(np.int32),
              byt5_states=rng.standard_normal((1, t.byt5_tokens, mcfg.byt5_in_dim), np.float32),
              byt5_mask=(np.arange(t.byt5_tokens) < max(1, t.byt5_tokens // 2))[None].astype(np.int32),
              vision_states=rng.standard_normal((1, t.vision_tokens, mcfg.vision_dim), np.float32),
              source="random (--random_conditioning)")


ENCODER_FLAGS = ("--text_encoder", "--byt5", "--siglip")


def check_prompt_inputs(prompt: str, negative_prompt: str | None, *, states: str, negative_states: str,
                        random_conditioning: bool, image: str, text_encoder: str, byt5: str, siglip: str,
                        tokenizer: str, tokenize=None) -> dict | None:
  """The encoder checkpoint paths for --prompt (checked to exist, nothing loaded), None without
  a prompt; GenerateError for a combination that cannot work."""
  if not prompt:
    if negative_prompt is not None:
      raise GenerateError("--negative_prompt needs --prompt (with --states, pass the negative's states as "
                          "--negative_states)")
    return None
  if states or random_conditioning:
    raise GenerateError(f"give --prompt or {'--states' if states else '--random_conditioning'}, not both")
  if negative_prompt is not None and negative_states:
    raise GenerateError("give --negative_prompt or --negative_states, not both")
  paths = {"--text_encoder": text_encoder, "--byt5": byt5, "--siglip": siglip}
  missing = [f for f, v in paths.items() if not v]
  if missing:
    raise GenerateError(f"--prompt needs the JAX encoders' checkpoints: pass {', '.join(missing)} (folders in the "
                        "reference layout or wc_jax Orbax; --tokenizer when the text encoder folder has no "
                        "tokenizer.json), or precomputed --states from write_records")
  if tokenizer:
    paths["--tokenizer"] = tokenizer
  for flag, path in paths.items():
    if "://" not in path and not os.path.exists(path):
      raise GenerateError(f"{flag}={path}: no such file or folder")
  if not tokenizer and tokenize is None and "://" not in text_encoder \
      and not os.path.isfile(os.path.join(text_encoder, "tokenizer.json")):
    raise GenerateError(f"--text_encoder={text_encoder} has no tokenizer.json; pass --tokenizer (the Qwen2.5-VL "
                        "checkpoint's tokenizer.json or its folder)")
  if not image:
    raise GenerateError("--prompt needs --image: SigLIP encodes the first frame and the VAE its latent")
  return paths


def encode_prompt(paths: dict, prompt: str, pixels: np.ndarray, vae, frame_hw, mcfg: DiTConfig, *,
                  max_text_tokens: int = 0, tokenize=None, negative: str | None = None):
  """(states, negative states or None) of `prompt` and the first frame through the JAX encoders,
  exactly as `python -m wc_jax.data.write_records images` writes them (its `JaxEncoder`): the
  text path, the ByT5 glyph rule, SigLIP on the image and the image's VAE latent at `frame_hw`.
  `negative` (a prompt, "" the reference's default): the CFG negative as the pipeline builds it."""
  from wc_jax.data import write_records
  try:
    with phase("loading the prompt encoders", ", ".join(f"{k}={v}" for k, v in paths.items())):
      enc = write_records.jax_encoder(paths["--text_encoder"], paths["--byt5"], paths["--siglip"],
                                      tokenizer=paths.get("--tokenizer"), frame_hw=frame_hw,
                                      max_text_tokens=max_text_tokens or None, tokenize=tokenize, vae_model=vae)
  except (ConversionError, FileNotFoundError, ValueError) as e:
    raise GenerateError(f"prompt encoders: {' '.join(str(e).split())}") from None
  dims = enc.dims
  for key, flag, want in (("text_dim", "--text_encoder", mcfg.text_dim), ("byt5_dim", "--byt5", mcfg.byt5_in_dim),
                          ("vision_dim", "--siglip", mcfg.vision_dim)):
    if dims[key] != want:
      raise GenerateError(f"{flag}={paths[flag]} gives states {dims[key]} wide, the DiT takes {want} "
                          f"(model.{'byt5_in_dim' if key == 'byt5_dim' else key})")
  try:
    raw = enc(pixels, prompt)
  except ValueError as e:
    raise GenerateError(f"--prompt: {' '.join(str(e).split())}") from None
  source = f"--prompt {prompt!r} (JAX encoders)"
  states = states_from_raw(raw, mcfg, source, "--prompt")
  neg = None
  if negative is not None:
    neg = states_from_raw(enc.negative(raw, negative), mcfg, f"--negative_prompt {negative!r}", "--negative_prompt")
  return states, neg


def bidirectional_plan(cfg, mcfg: DiTConfig, w2c: np.ndarray, bi_chunk: int, seed: int, frames: int):
  """The chunks and contexts of a bidirectional run (`bidirectional.plan`), checked against the
  model's temporal positions (sampling.bi_max_latents, default BI_MAX_LATENTS) before any model
  is built."""
  from wc_jax.inference import RETRIEVAL_POINTS, RETRIEVAL_RADIUS, bidirectional, sphere_points
  sub = mcfg.chunk_latents
  if bi_chunk < 0 or bi_chunk % sub:
    raise GenerateError(f"--bi_chunk={bi_chunk}: a multiple of the model's {sub}-latent chunk (the reference: "
                        f"{BI_CHUNK}), or 0 for the whole clip in one pass")
  s = cfg.sampling
  limit = int(s.get("bi_max_latents", BI_MAX_LATENTS))
  t = len(w2c)
  width = min(bi_chunk, t) if bi_chunk else t
  if width > limit:
    what = "the whole clip in one pass" if bi_chunk == 0 else f"--bi_chunk={bi_chunk}"
    raise GenerateError(f"--frames={frames}: {what} puts {width} latent frames in one bidirectional pass, "
                        f"more than the model's {limit} temporal positions (sampling.bi_max_latents); use "
                        f"--bi_chunk={BI_CHUNK} (the reference's chunked bi_rollout) or fewer frames")
  points = sphere_points(int(s.get("retrieval_points", RETRIEVAL_POINTS)), RETRIEVAL_RADIUS, seed=seed)
  chunks = bidirectional.plan(w2c, t, bi_chunk, points, sub_chunk=sub, memory_frames=int(s.max_context_frames),
                              recent=int(s.recent_context_frames))
  widest = max(e - b + len(idx) for b, e, idx in chunks)
  if widest > limit:
    raise GenerateError(f"--frames={frames}: a bidirectional pass would hold {widest} latent frames (chunk + "
                        f"context), more than the model's {limit} temporal positions (sampling.bi_max_latents); "
                        "use a smaller --bi_chunk or fewer frames")
  return chunks


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of any image PIL reads; GenerateError naming the file otherwise."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise GenerateError(f"--image={path}: cannot read an image ({type(e).__name__}: {e})") from None


def fit_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: scaled to cover, then centre-cropped (no distortion)."""
  from PIL import Image
  im = Image.fromarray(pixels)
  s = max(width / im.width, height / im.height)
  w, h = max(width, round(im.width * s)), max(height, round(im.height * s))
  im = im.resize((w, h), Image.BICUBIC)
  left, top = (w - width) // 2, (h - height) // 2
  return np.asarray(im.crop((left, top, left + width, top + height)), np.uint8)


# ----------------------------------------------------------------------------- model

def build_model(cfg, mcfg: DiTConfig, checkpoint: str = "", which: str = "ema"):
  """The DiT: `checkpoint` (RL run, convert folder or reference folder; its model config must be
  the run's), else cfg.model.checkpoint, else a random init seeded with cfg.seed."""
  path = checkpoint or cfg.model.get("checkpoint", "")
  if path:
    if not as_path(path).exists():
      raise GenerateError(f"--checkpoint={path}: no such file or folder")
    try:
      if not (as_path(path) / "wc_jax.json").exists() and dit_convert.rl_step_dir(path) is not None:
        step_dir = dit_convert.rl_step_dir(path)
        saved, want = dit_convert.rl_model_config(step_dir), mcfg.to_dict()
        diff = {k: (v, want[k]) for k, v in saved.items() if k not in dit_convert.RUNTIME_FIELDS and v != want[k]}
        if diff:
          raise GenerateError(f"--checkpoint={step_dir} was trained with another model config; differences "
                              f"(checkpoint vs --config): {diff}")
        with phase("loading the WorldPlay DiT", f"{which} weights of RL checkpoint {step_dir}"):
          model_config, params, _ = dit_convert.params_from_rl_checkpoint(step_dir, which)
          return dit_convert.build_model(model_config, params, **want)
      with phase("loading the WorldPlay DiT", path):
        return load_model(kinds.DIT, path, **mcfg.to_dict())
    except (ConversionError, ValueError) as e:
      if isinstance(e, GenerateError):
        raise
      raise GenerateError(f"--checkpoint={path}: {str(e).splitlines()[0]}") from None
  with phase("building the WorldPlay DiT", f"{mcfg.hidden_size} wide, {mcfg.depth} blocks, random weights"):
    model = build(mcfg, seed=cfg.seed)
    if cfg.model.get("init", "reference") == "random":
      randomize(model, cfg.seed)   # the reference zero-inits output layers: a fresh model predicts v = 0
  return model


@functools.lru_cache(maxsize=None)
def _encode_text_program(apply):
  return jax.jit(lambda state, *args: apply(state, "encode_text", *args))


@functools.lru_cache(maxsize=None)
def _cfg_program(apply):
  """Euler over the engine's sigmas with v = v_neg + g (v_pos - v_neg): both branches see the same
  noise, condition, actions and cameras; each has its own text cache and context cache."""
  def run(state, noise, cond, action, viewmats, Ks, caches, sig, scale):
    def vel(x, t, aux):
      st, (tc, ctx, ntc, nctx) = aux
      hs = jnp.concatenate([x, cond], axis=1)
      tt = jnp.full(action.shape, t)
      v = apply(st, "denoise_chunk", hs, tt, action, viewmats, Ks, tc, ctx)
      vn = apply(st, "denoise_chunk", hs, tt, action, viewmats, Ks, ntc, nctx)
      return vn + scale * (v - vn)
    return euler(vel, noise, sig, (state, caches))
  return jax.jit(run)


def sample(engine: ChunkEngine, state, *, noise, cond, viewmats, Ks, action, text_cache, w2c, neg_cache=None,
           guidance: float = 1.0, progress: bool = True):
  """Chunk by chunk through `engine` (context retrieval, then denoising), as `engine.generate`
  does, with a progress bar and optional classifier-free guidance. Returns (latents, context
  indices per chunk, DiT passes)."""
  from tqdm import tqdm
  lat, cond, action = jnp.asarray(noise, jnp.float32), jnp.asarray(cond, jnp.float32), jnp.asarray(action, jnp.float32)
  viewmats, Ks = jnp.asarray(viewmats, jnp.float32), jnp.asarray(Ks, jnp.float32)
  c = engine.chunk
  chosen, passes = [], 0
  for ci in tqdm(range(lat.shape[2] // c), desc="chunks", unit="chunk", disable=not progress):
    sl = slice(ci * c, ci * c + c)
    ctx, idx = engine.context(state, lat, cond, action, viewmats, Ks, ci * c, text_cache, w2c)
    args = (lat[:, :, sl], cond[:, :, sl], action[:, sl], viewmats[:, sl], Ks[:, sl])
    if neg_cache is None:
      x = engine.denoise(state, *args, text_cache, ctx)
      passes += (ctx is not None) + engine.steps
    else:
      nctx, _ = engine.context(state, lat, cond, action, viewmats, Ks, ci * c, neg_cache, w2c)
      x = _cfg_program(engine.apply)(state, *args, (text_cache, ctx, neg_cache, nctx), engine._sig,
                                     jnp.float32(guidance))
      passes += 2 * ((ctx is not None) + engine.steps)
    chosen.append(idx)
    lat = lat.at[:, :, sl].set(x)
  return lat, chosen, passes


# ----------------------------------------------------------------------------- video

def action_label(label: int) -> str:
  """81-way label -> the pose-string keys that command it ('w+right'; 'still' for none)."""
  t, r = split_action(int(label))
  keys = [k for k in (TRANS_KEYS[t], ROT_KEYS[r]) if k]
  return "+".join(keys) or "still"


def burn_label(frame: np.ndarray, text: str) -> np.ndarray:
  """`text` on a dark box in the top-left corner of uint8 [H, W, 3]."""
  from PIL import Image, ImageDraw, ImageFont
  im = Image.fromarray(frame)
  size = max(8, frame.shape[0] // 8)
  try:
    font = ImageFont.load_default(size=size)
  except TypeError:   # Pillow < 10.1: the fixed bitmap font
    font = ImageFont.load_default()
  draw = ImageDraw.Draw(im)
  box = draw.textbbox((2, 1), text, font=font)
  draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
  draw.text((2, 1), text, fill=(255, 255, 255), font=font)
  return np.asarray(im)


def decode_to_video(vae, latents: np.ndarray, path: pathlib.Path, labels: list[str], *, chunk: int, fps: int,
                    progress: bool = True) -> int:
  """Decodes DiT latents [1, C, T, h, w] `chunk` latents at a time (the causal cache carries
  over: the frames equal one whole-video decode, and memory does not grow with the length) and
  streams them into an mp4. Returns the frame count."""
  from tqdm import tqdm
  from wc_jax.models import vae as vae_lib
  z = vae_lib.unscale_latents(vae.config, jnp.asarray(latents, jnp.float32))
  n, cache = 0, None
  with mp4_writer(path, fps) as writer:
    for s in tqdm(range(0, z.shape[2], chunk), desc="decoding", unit="call", disable=not progress):
      video, cache = vae_lib.decode_chunk(vae, z[:, :, s:s + chunk], cache)   # [1, 3, t, H, W] in [-1, 1]
      frames = np.asarray(jnp.clip((jnp.moveaxis(video[0], 0, -1) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)
      for f in frames:
        writer.append_data(burn_label(f, labels[n]))
        n += 1
  return n


@contextlib.contextmanager
def mp4_writer(path: pathlib.Path, fps: int):
  """An imageio-ffmpeg H.264 writer (append_data(uint8 [H, W, 3])), closed on exit."""
  import imageio.v2 as imageio
  with warnings.catch_warnings():   # imageio-ffmpeg starts ffmpeg with a fork: JAX warns about any fork
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error")
    try:
      yield writer
    finally:
      writer.close()


def _commit(tmp: dict, paths: dict, summary: dict) -> None:
  """Writes the summary, then renames the temporary outputs into place: the video last (its
  presence means all are complete)."""
  tmp["summary"].write_text(json.dumps(summary, indent=2))
  for k in ("latents", "summary", "video"):
    os.replace(tmp[k], paths[k])


def _output_paths(out: str, overwrite: bool) -> dict[str, pathlib.Path]:
  out_p = pathlib.Path(out)
  if out_p.suffix.lower() != ".mp4":
    raise GenerateError(f"--out={out}: the video is written as mp4; name it *.mp4")
  paths = {"video": out_p, "latents": out_p.with_suffix(".npy"), "summary": out_p.with_suffix(".json")}
  if not overwrite:
    there = [str(p) for p in paths.values() if p.exists()]
    if there:
      raise GenerateError(f"--out={out}: {', '.join(there)} already exist(s); pass --overwrite to replace")
  if out_p.is_dir():
    raise GenerateError(f"--out={out} is a folder; name a .mp4 file")
  return paths


# ----------------------------------------------------------------------------- the job

def generate_video(cfg, *, out: str, image: str = "", actions: str = "", pose: str = "", frames: int = 0,
        seed: int | None = None, states: str = "", record: int = 0, random_conditioning: bool = False,
        checkpoint: str = "", which: str = "ema", guidance: float | None = None, negative_states: str = "",
        fps: int = 24, decode_latents: int = 1, overwrite: bool = False, mesh=None, model=None,
        progress: bool = True, poses: str = "", intrinsics: str = "", allow_random_weights: bool = False,
        prompt: str = "", negative_prompt: str | None = None, text_encoder: str = "", byt5: str = "",
        siglip: str = "", tokenizer: str = "", max_text_tokens: int = 0, tokenize=None, mode: str = "ar",
        bi_chunk: int = BI_CHUNK) -> dict:
  """Generates one video; returns its summary (also written to OUT.json). `mesh`: default the
  config's; `model`: a DiT module to use instead of building one (library callers). A config
  with family = "lingbot" goes to `generate_lingbot` (poses / intrinsics / allow_random_weights
  are its inputs). `prompt` is encoded by the JAX encoders at text_encoder / byt5 / siglip
  (`write_records.jax_encoder`; `tokenize`: a text -> ids callable replacing the tokenizer
  file); mode="bidirectional" runs `wc_jax.inference.bidirectional` (chunks of `bi_chunk`)."""
  if model_family(cfg) == "lingbot":
    if pose:
      raise GenerateError(f"--pose={pose}: LingBot-World takes the reference's --poses=poses.npy "
                          "--intrinsics=intrinsics.npy (or --actions), not WorldPlay's pose JSON")
    if checkpoint:
      raise GenerateError(f"--checkpoint={checkpoint}: LingBot-World takes its weights from the config "
                          "(--config.model.checkpoint_low/checkpoint_high=DIR, --config.vae.checkpoint=PATH)")
    if model is not None or record:
      raise GenerateError("model= / --record are WorldPlay options; LingBot-World builds its two experts from "
                          "the config and reads --states from an .npz")
    if mode != "ar":
      raise GenerateError(f"--mode={mode}: a WorldPlay option; LingBot-World denoises the whole clip at once")
    worldplay_encoders = [f for f, v in (("--text_encoder", text_encoder), ("--byt5", byt5), ("--siglip", siglip),
                                         ("--tokenizer", tokenizer), ("--max_text_tokens", max_text_tokens)) if v]
    if worldplay_encoders or tokenize is not None:
      raise GenerateError(f"{', '.join(worldplay_encoders) or 'tokenize='}: WorldPlay's prompt encoders; "
                          "LingBot-World encodes --prompt with the config's umT5 text_encoder section "
                          "(--config.text_encoder.checkpoint=... --config.text_encoder.tokenizer=...)")
    return generate_lingbot(cfg, out=out, image=image, actions=actions, poses=poses, intrinsics=intrinsics,
                            frames=frames, seed=seed, states=states, negative_states=negative_states,
                            random_conditioning=random_conditioning, allow_random_weights=allow_random_weights,
                            guidance=guidance, fps=fps, decode_latents=decode_latents, overwrite=overwrite,
                            mesh=mesh, progress=progress, prompt=prompt, negative_prompt=negative_prompt)
  if poses or intrinsics:
    raise GenerateError("--poses / --intrinsics are LingBot-World's camera input; WorldPlay takes --actions or "
                        "--pose (the reference's pose JSON)")
  guidance = 1.0 if guidance is None else float(guidance)
  t_start = time.time()
  run_config.validate(cfg, required=run_config.GENERATE_SECTIONS + ("vae",))
  mcfg = from_config(cfg.model)
  paths = _output_paths(out, overwrite)
  if mode not in MODES:
    raise GenerateError(f"--mode={mode!r}: expected one of {', '.join(MODES)}")
  encoder_paths = check_prompt_inputs(prompt, negative_prompt, states=states, negative_states=negative_states,
                                      random_conditioning=random_conditioning, image=image, text_encoder=text_encoder,
                                      byt5=byt5, siglip=siglip, tokenizer=tokenizer, tokenize=tokenize)
  if guidance != 1.0 and not (negative_states or random_conditioning or prompt):
    raise GenerateError(f"--guidance={guidance} needs --negative_states (the negative prompt's encoder states), "
                        "or --prompt (the negative prompt is then encoded too)")
  if fps < 1 or decode_latents < 1:
    raise GenerateError(f"--fps={fps} and --decode_latents={decode_latents} must be >= 1")
  traj, note = make_trajectory(mcfg, actions=actions, pose=pose, frames=frames)
  if note:
    log.info("camera: %s", note)
  t = traj.num_latents
  seed = cfg.seed if seed is None else int(seed)
  rng = np.random.default_rng(seed)
  c, lh, lw = mcfg.latent_channels, int(cfg.sampling.latent_height), int(cfg.sampling.latent_width)
  noise = rng.standard_normal((1, c, t, lh, lw)).astype(np.float32)
  w2c = traj.w2c.astype(np.float32)
  bi_plan = None
  if mode == "bidirectional":
    bi_plan = bidirectional_plan(cfg, mcfg, w2c, bi_chunk, seed, frames or 4 * t - 3)

  # conditioning (checked before any model is built; --prompt is encoded once the VAE is there)
  if prompt:
    conds = None
  elif states:
    conds = load_states(states, mcfg, record)
  elif random_conditioning:
    log.warning("random encoder states (--random_conditioning): the prompt is meaningless noise")
    conds = random_states(cfg, mcfg, rng)
  else:
    raise GenerateError("no conditioning: pass --states (a write_records record set or an .npz of encoder "
                        "states), --prompt with the JAX encoders (--text_encoder, --byt5, --siglip), or "
                        "--random_conditioning for a smoke test")
  neg = None
  if guidance != 1.0 and not prompt:
    neg = load_states(negative_states, mcfg, record, "--negative_states") if negative_states else \
        random_states(cfg, mcfg, rng)
  elif guidance != 1.0 and negative_states:
    neg = load_states(negative_states, mcfg, record, "--negative_states")

  pixels = read_image(image) if image else None
  if conds is not None and pixels is None and "first_latent" not in conds and not random_conditioning:
    raise GenerateError(f"no first frame: pass --image, or --states with a first_latent ({conds['source']} has none)")
  if model is None:
    model = build_model(cfg, mcfg, checkpoint, which)
  apply, state = functional(model)
  del model

  from wc_jax.models import vae as vae_lib
  from wc_jax.rl.components import build_vae
  with phase("building the VAE", cfg.vae.get("checkpoint", "") or "random weights"):
    try:
      vae = build_vae(cfg.vae, c)
    except (ConversionError, ValueError) as e:
      raise GenerateError(f"vae: {str(e).splitlines()[0]}") from None
  fs = int(vae.config.ffactor_spatial)
  if prompt:
    if negative_prompt is not None and guidance == 1.0:
      log.warning("--negative_prompt is used only with --guidance > 1")
    want_neg = (negative_prompt or "") if guidance != 1.0 and neg is None else None
    conds, neg_prompt = encode_prompt(encoder_paths, prompt, pixels, vae, (lh * fs, lw * fs), mcfg,
                                      max_text_tokens=max_text_tokens, tokenize=tokenize, negative=want_neg)
    neg = neg if neg is not None else neg_prompt
  if prompt:
    first = conds["first_latent"]
    first_source = f"VAE encoding of {image} (the encoders' frame, as write_records)"
  elif pixels is not None:
    video = jnp.asarray(fit_image(pixels, lh * fs, lw * fs), jnp.float32).transpose(2, 0, 1)[None, :, None] / 127.5 - 1
    first = np.asarray(vae_lib.scale_latents(vae.config, vae_lib.encode(vae, video).mode()))[:, :, 0]
    first_source = f"VAE encoding of {image}"
  elif "first_latent" in conds:
    first = conds["first_latent"]
    first_source = f"first_latent of {conds['source']}"
  elif random_conditioning:
    first = rng.standard_normal((1, c, lh, lw)).astype(np.float32)
    first_source = "random (--random_conditioning)"
  else:
    raise GenerateError(f"no first frame: pass --image, or --states with a first_latent ({conds['source']} has none)")
  if first.shape != (1, c, lh, lw):
    raise GenerateError(f"the first latent ({first_source}) has shape {list(first.shape)}, the model needs "
                        f"[1, {c}, {lh}, {lw}] (model.latent_channels, sampling.latent_height/width)")
  log.info("first frame: %s; conditioning: %s", first_source, conds["source"])

  mesh = mesh if mesh is not None else sharding.make_mesh(dict(cfg.mesh))
  state = jax.device_put(state, sharding.state_shardings(state, mesh))
  engine = ChunkEngine.from_config(apply, cfg, retrieval_seed=seed)
  cond = i2v_condition(first, t)
  text_keys = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states")
  t0 = time.time()
  with sharding.use_mesh(mesh):
    if bi_plan is not None:
      from wc_jax.inference import bidirectional
      roll = bidirectional.generate(apply, state, noise=noise, cond=cond, action=traj.actions.astype(np.float32)[None],
                                    viewmats=w2c[None], Ks=traj.intrinsics.astype(np.float32)[None], states=conds,
                                    sig=engine.sig, chunks=bi_plan, neg_states=neg, guidance=guidance,
                                    context_timestep=engine.context_timestep, progress=progress)
      latents, chosen, passes = np.asarray(jax.device_get(roll.latents)), roll.context_indices, roll.model_passes
    else:
      latents, chosen, passes = _sample_ar(apply, state, engine, conds, neg, text_keys, noise, cond, traj, w2c,
                                           guidance, progress)
  t_sample = time.time() - t0
  if not np.isfinite(latents).all():
    raise RuntimeError("the generated latents are not finite (the model or its inputs are broken); nothing written")
  info = {"height": lh * fs, "width": lw * fs, "seed": seed, "mode": mode, "first_frame": first_source,
          "conditioning": conds["source"], "prompt": prompt, "actions": actions, "pose": pose, "camera_note": note,
          "guidance": guidance, "chunks": len(chosen) if bi_plan is not None else t // mcfg.chunk_latents,
          "steps": engine.steps, "model_passes": passes, "context_indices": chosen,
          "devices": len(mesh.devices.flat), "mesh": {k: int(v) for k, v in mesh.shape.items()}}
  if bi_plan is not None:
    info["bi_chunk"] = bi_plan[0][1] - bi_plan[0][0]
  return _write_outputs(paths, vae, latents, traj, decode_latents=decode_latents, fps=fps, progress=progress,
                        info=info, t_start=t_start, t_sample=t_sample)


def _sample_ar(apply, state, engine, conds, neg, text_keys, noise, cond, traj, w2c, guidance, progress):
  """AR chunks through the engine: (latents on the host, context indices, DiT passes incl. text)."""
  encode = _encode_text_program(apply)
  tokens = encode(state, *(jnp.asarray(conds[k]) for k in text_keys), jnp.zeros((1,)))
  text_cache = engine.encode_text(state, tokens)
  neg_cache = None
  if neg is not None:
    neg_cache = engine.encode_text(state, encode(state, *(jnp.asarray(neg[k]) for k in text_keys), jnp.zeros((1,))))
  latents, chosen, passes = sample(engine, state, noise=noise, cond=cond, viewmats=w2c[None],
                                   Ks=traj.intrinsics.astype(np.float32)[None],
                                   action=traj.actions.astype(np.float32)[None], text_cache=text_cache, w2c=w2c,
                                   neg_cache=neg_cache, guidance=guidance, progress=progress)
  return np.asarray(jax.device_get(latents)), chosen, passes + 1 + (neg is not None)


def _write_outputs(paths, vae, latents, traj, *, decode_latents: int, fps: int, progress: bool, info: dict,
                   t_start: float, t_sample: float) -> dict:
  """Decodes into OUT.mp4, saves OUT.npy and OUT.json under temporary names, then renames."""
  labels = [action_label(a) for a in traj.frame_actions]
  pid = os.getpid()
  tmp = {k: p.with_name(f".{p.stem}.tmp-{pid}{p.suffix}") for k, p in paths.items()}
  t1 = time.time()
  try:
    paths["video"].parent.mkdir(parents=True, exist_ok=True)
    n_frames = decode_to_video(vae, latents, tmp["video"], labels, chunk=decode_latents, fps=fps, progress=progress)
    t_decode = time.time() - t1
    np.save(tmp["latents"], latents)
    summary = {"video": str(paths["video"]), "latents": str(paths["latents"]), "frames": n_frames,
               "latent_shape": list(latents.shape), **info, "fps": fps,
               "seconds": {"sample": round(t_sample, 2), "decode": round(t_decode, 2),
                           "total": round(time.time() - t_start, 2)}}
    _commit(tmp, paths, summary)
  finally:
    for p in tmp.values():
      p.unlink(missing_ok=True)
  return summary


# ----------------------------------------------------------------------------- LingBot-World
# Configs with family = "lingbot" (configs/lingbot_tiny.py, configs/lingbot_a14b.py): the two
# Wan2.2 experts + camera branch and the Wan2.1 VAE through `wc_jax.inference.lingbot`. The
# prompt's umT5 states come from --prompt through the config's text_encoder section (or from a
# --states .npz); the camera from the reference's poses.npy / intrinsics.npy or our action strings.

FULL_SIZE_PARAMS = 10 ** 8     # an expert this big on random weights is a mistake, not a smoke test


def model_family(cfg) -> str:
  """The config's world model: cfg.family ("worldplay" when absent, as the older configs)."""
  family = str(cfg.get("family", "worldplay"))
  if family not in ("worldplay", "lingbot"):
    raise GenerateError(f"config family={family!r}: generate knows 'worldplay' and 'lingbot'")
  return family


def poses_from_actions(actions: str, num_frames: int = 0):
  """Action string ("w-4, right-4") -> (poses [F, 4, 4] c2w, intrinsics [F, 4]) in the format of
  LingBot's poses.npy / intrinsics.npy (OpenCV axes, fx fy cx cy at 480x832). F = num_frames, or
  the actions' own 4L-3 frames (L = 1 + the commanded latents) when 0; a shorter path is held at
  its last pose, a longer one is a ValueError."""
  from wc_jax.inference import lingbot
  traj = trajectories.trajectory_from_string(actions)
  return lingbot.poses_from_trajectory(traj, num_frames or len(traj.frame_c2w))


def _lingbot_frames(frames: int) -> int:
  if frames < 1 or (frames - 1) % 4:
    k = max(0, round((frames - 1) / 4))
    near = sorted({4 * max(0, k - 1) + 1, 4 * k + 1, 4 * k + 5})
    raise GenerateError(f"--frames={frames}: LingBot-World makes 1+4k frames (the VAE's 4 frames per latent "
                        f"after the first), e.g. {', '.join(map(str, near))}")
  return frames


def _load_npy(path: str, what: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise GenerateError(f"{what}={path}: not a readable .npy ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def lingbot_camera(actions: str, poses: str, intrinsics: str, frames: int, frame_num: int):
  """(c2w [F, 4, 4] or None, intrinsics [F, 4] or None, F, per-frame labels or None, note)."""
  from wc_jax.inference import lingbot
  if actions and (poses or intrinsics):
    raise GenerateError("give --actions or --poses/--intrinsics, not both")
  if frames:
    _lingbot_frames(frames)
  if actions:
    try:
      traj = trajectories.trajectory_from_string(actions)
    except ValueError as e:
      raise GenerateError(f"--actions={actions!r}: {e}") from None
    n = frames or len(traj.frame_c2w)
    if n < len(traj.frame_c2w):
      raise GenerateError(f"--actions={actions!r} command {len(traj.frame_c2w)} frames, more than --frames={frames}; "
                          "drop --frames or shorten the actions")
    c2w, k = lingbot.poses_from_trajectory(traj, n)
    labels = [action_label(a) for a in traj.frame_actions] + ["still"] * (n - len(traj.frame_c2w))
    note = f"{n - len(traj.frame_c2w)} frames at rest appended to reach --frames={frames}" \
        if n > len(traj.frame_c2w) else ""
    return c2w, k, n, labels, note
  if not poses:
    if intrinsics:
      raise GenerateError(f"--intrinsics={intrinsics} needs --poses")
    n = frames or frame_num
    return None, None, n, None, "no camera path: no camera conditioning (the reference without --action_path)"
  p = pathlib.Path(poses)
  if p.is_dir():
    intrinsics = intrinsics or str(p / "intrinsics.npy")
    poses = str(p / "poses.npy")
  if not intrinsics:
    raise GenerateError(f"--poses={poses} needs --intrinsics (fx, fy, cx, cy per frame, the reference's "
                        "intrinsics.npy)")
  c2w, k = _load_npy(poses, "--poses"), _load_npy(intrinsics, "--intrinsics")
  note = ""
  if not frames:
    have = len(c2w) if c2w.ndim == 3 else 0
    frames = min(frame_num, max(1, ((have - 1) // 4) * 4 + 1))
    if frames < frame_num:
      note = f"{frames} frames: the most the {have} poses cover (1+4k, at most sampling.frame_num={frame_num})"
  try:
    c2w, k = lingbot.check_camera_inputs(c2w, k, frames)
  except ValueError as e:
    raise GenerateError(f"--poses={poses}, --intrinsics={intrinsics}: {e}") from None
  return c2w, k, frames, None, note


def lingbot_states(cfg, states: str, negative_states: str, random_conditioning: bool,
                   rng: np.random.Generator) -> dict:
  """{text_states, negative_states [1, L, text_dim] float32, source}: umT5 outputs from an .npz
  (`text_states` and `negative_states`; or the negative from --negative_states' `negative_states`
  / `text_states`), else random with --random_conditioning."""
  from wc_jax.inference import lingbot
  dim, length = int(cfg.model.text_dim), int(cfg.model.text_len)
  if not states:
    if not random_conditioning:
      raise GenerateError("no prompt states: pass --states=STATES.npz with text_states and negative_states (umT5 "
                          "outputs [L, %d]), or --prompt=\"...\" (encoded by the config's text_encoder), or "
                          "--random_conditioning for a smoke test" % dim)
    log.warning("random prompt states (--random_conditioning): the prompt is meaningless noise")
    rows = max(1, length * 3 // 4)
    return dict(text_states=rng.standard_normal((1, rows, dim)).astype(np.float32),
                negative_states=rng.standard_normal((1, rows, dim)).astype(np.float32),
                source="random (--random_conditioning)")

  def read(path, what):
    if not pathlib.Path(path).is_file():
      raise GenerateError(f"{what}={path}: no such file (an .npz of umT5 states)")
    try:
      with np.load(path) as z:
        return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
      raise GenerateError(f"{what}={path}: not a readable .npz ({e})") from None

  raw = read(states, "--states")
  if "text_states" not in raw:
    raise GenerateError(f"--states={states} lacks text_states (has {sorted(raw)})")
  neg, neg_src = raw.get("negative_states"), states
  if negative_states:
    nraw = read(negative_states, "--negative_states")
    neg = nraw.get("negative_states", nraw.get("text_states"))
    if neg is None:
      raise GenerateError(f"--negative_states={negative_states} lacks negative_states / text_states "
                          f"(has {sorted(nraw)})")
    neg_src = negative_states
  if neg is None:
    raise GenerateError(f"--states={states} lacks negative_states (the negative prompt's umT5 states; the "
                        "reference always guides against one): add it, or pass --negative_states=NEG.npz")
  out = {"source": states if neg_src == states else f"{states} (negative: {neg_src})"}
  for key, x, src in (("text_states", raw["text_states"], states), ("negative_states", neg, neg_src)):
    try:
      out[key] = np.asarray(lingbot.check_states(key, _bf16_states(x), dim, length))
    except ValueError as e:
      raise GenerateError(f"{src}: {e}") from None
  return out


def _repo_path(path: str) -> str:
  """A relative config path as given when it exists from here, else from the repository root (the
  tiny config names its fixture encoder relative to it)."""
  if "://" in path:
    return path
  p = pathlib.Path(path).expanduser()
  from_root = pathlib.Path(__file__).resolve().parents[1] / p
  return str(from_root) if not p.is_absolute() and not p.exists() and from_root.exists() else str(p)


def check_lingbot_prompt(cfg, prompt: str, negative_prompt: str | None, *, states: str, negative_states: str,
                         random_conditioning: bool) -> dict | None:
  """The umT5 text_encoder section for --prompt (paths resolved and checked to exist, widths checked
  against the DiT; nothing loaded), None without a prompt; GenerateError for what cannot work."""
  if not prompt:
    if negative_prompt is not None:
      raise GenerateError("--negative_prompt needs --prompt (with --states, pass the negative's states as "
                          "--negative_states)")
    return None
  for flag, given in (("--states", states), ("--negative_states", negative_states),
                      ("--random_conditioning", random_conditioning)):
    if given:
      raise GenerateError(f"give --prompt or {flag}, not both (--prompt is encoded by the config's umT5 "
                          "text_encoder; the other would be ignored)")
  if "text_encoder" not in cfg or not cfg.text_encoder:
    raise GenerateError("--prompt needs the config's text_encoder section (kind='umt5', checkpoint, tokenizer, "
                        "text_len, negative_prompt; see configs/lingbot_a14b.py), or precomputed --states")
  section = cfg.text_encoder
  kind = str(section.get("kind", kinds.UMT5))
  if kind != kinds.UMT5:
    raise GenerateError(f"text_encoder.kind={kind!r}: LingBot-World's prompt encoder is {kinds.UMT5!r}")
  missing = [f"text_encoder.{k}" for k in ("checkpoint", "tokenizer") if not section.get(k, "")]
  if missing:
    raise GenerateError(f"--prompt: {' and '.join(missing)} not set (the release's "
                        "models_t5_umt5-xxl-enc-bf16.pth, or a folder from python -m wc_jax.convert, and its "
                        "google/umt5-xxl tokenizer folder): --config.text_encoder.checkpoint=... "
                        "--config.text_encoder.tokenizer=...")
  paths = {k: _repo_path(str(section.get(k))) for k in ("checkpoint", "tokenizer")}
  for k, path in paths.items():
    if "://" not in path and not os.path.exists(path):
      raise GenerateError(f"text_encoder.{k}={section.get(k)}: no such file or folder")
  text_dim, dit_len = int(cfg.model.text_dim), int(cfg.model.text_len)
  arch = section.get("arch", None)
  if arch and "dim" in arch and int(arch["dim"]) != text_dim:
    raise GenerateError(f"text_encoder.arch.dim={int(arch['dim'])} but model.text_dim={text_dim}: the umT5 "
                        "states would not fit the DiT's text embedding (encoder and experts do not belong together)")
  text_len = int(section.get("text_len", dit_len))
  if not 1 <= text_len <= dit_len:
    raise GenerateError(f"text_encoder.text_len={text_len}: must be 1..model.text_len={dit_len} (the DiT pads "
                        "the prompt's states to its text_len; it cannot take more rows)")
  negative = negative_prompt if negative_prompt is not None else section.get("negative_prompt", None)
  if negative is None:
    raise GenerateError("no negative prompt: set text_encoder.negative_prompt (the reference's sample_neg_prompt) "
                        "or pass --negative_prompt (\"\" for an empty one)")
  return {"section": section, "paths": paths, "text_len": text_len, "negative_prompt": str(negative),
          "negative_source": "--negative_prompt" if negative_prompt is not None else "text_encoder.negative_prompt"}


def lingbot_prompt_states(cfg, prompt: str, checked: dict, *, mesh=None) -> dict:
  """{text_states, negative_states [1, text_len, text_dim] float32, source}: the prompt and the
  negative prompt through the config's umT5 (`umt5_from_config`, then `umt5.encode_prompts`, one
  prompt per call): the rows past each prompt's tokens are zero, so the DiT sees what the
  reference feeds it (trimmed states zero-padded to text_len, every row attended). The encoder
  is dropped before the experts are built."""
  from wc_jax.convert.encoders import umt5_from_config
  from wc_jax.models.encoders import umt5
  section = checked["section"]
  section = {**(section.to_dict() if hasattr(section, "to_dict") else dict(section)), **checked["paths"]}
  text_dim = int(cfg.model.text_dim)
  try:
    enc, tok, _ = umt5_from_config(section, mesh=mesh)
  except (ConversionError, FileNotFoundError, ImportError) as e:
    raise GenerateError(f"text_encoder: {str(e).splitlines()[0]}") from None
  if int(enc.cfg.d_model) != text_dim:
    raise GenerateError(f"text_encoder.checkpoint={section['checkpoint']}: umT5 states are {enc.cfg.d_model} wide "
                        f"but model.text_dim={text_dim}: the encoder and the experts do not belong together")
  text_len = checked["text_len"]
  ctx = sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with ctx, phase("encoding the prompt", f"umT5 {section['checkpoint']}"):
    pos = umt5.encode_prompts(enc, tok, [prompt], text_len)
    neg = umt5.encode_prompts(enc, tok, [checked["negative_prompt"]], text_len)
    out = {k: np.asarray(jax.device_get(x)).astype(np.float32) for k, x in (("text_states", pos),
                                                                          ("negative_states", neg))}
  del enc
  out["source"] = (f"prompt {prompt!r} (umT5 {section['checkpoint']}, text_len {text_len}; negative: "
                   f"{checked['negative_source']})")
  return out


def check_lingbot_weights(cfg, allow_random: bool) -> dict:
  """{expert / vae: checkpoint path or 'random'}; GenerateError for a named path that does not
  exist, or for random full-size experts unless allowed."""
  from wc_jax.models.lingbot import config as lb_config
  paths = {"model.checkpoint_low": str(cfg.model.get("checkpoint_low", "") or ""),
           "model.checkpoint_high": str(cfg.model.get("checkpoint_high", "") or ""),
           "vae.checkpoint": str(cfg.vae.get("checkpoint", "") or "") if "vae" in cfg else ""}
  for key, path in paths.items():
    if path and not as_path(path).exists():
      raise GenerateError(f"{key}={path}: no such file or folder")
  mcfg = lb_config.from_config(cfg.model)
  d, layers = int(mcfg.dim), int(mcfg.num_layers)
  params = layers * (8 * d * d + 2 * d * int(mcfg.ffn_dim))      # self + cross attention, FFN
  missing = [k for k, v in paths.items() if not v]
  if missing and params >= FULL_SIZE_PARAMS and not allow_random:
    raise GenerateError(f"{', '.join(missing)} not set: this config's experts have ~{params / 1e9:.1f}B parameters "
                        "each and would run on random weights; point them at converted checkpoints "
                        "(--config.model.checkpoint_low=DIR --config.model.checkpoint_high=DIR "
                        "--config.vae.checkpoint=Wan2.1_VAE.pth), or pass --allow_random_weights or "
                        "--random_conditioning for a smoke run")
  if missing:
    log.warning("random weights for %s (a demo: the video means nothing)", ", ".join(missing))
  return {k: v or "random" for k, v in paths.items()}


def generate_lingbot(cfg, *, out: str, image: str = "", actions: str = "", poses: str = "", intrinsics: str = "",
                     frames: int = 0, seed: int | None = None, states: str = "", negative_states: str = "",
                     random_conditioning: bool = False, allow_random_weights: bool = False,
                     guidance: float | None = None, fps: int = 24, decode_latents: int = 1,
                     overwrite: bool = False, mesh=None, progress: bool = True, prompt: str = "",
                     negative_prompt: str | None = None) -> dict:
  """One LingBot-World video (`generate_video` with a family="lingbot" config): every input is
  checked before a model is built; OUT.mp4 (the commanded action burned in when --actions),
  OUT.npy (final latents [1, z, T, h, w]) and OUT.json, written under temporary names. `prompt`
  (and `negative_prompt`, default the config's text_encoder.negative_prompt) are encoded by the
  config's umT5 (`lingbot_prompt_states`) instead of reading --states."""
  from wc_jax.inference import lingbot
  t_start = time.time()
  for section in ("model", "sampling"):
    if section not in cfg:
      raise GenerateError(f"the LingBot config has no {section!r} section")
  paths = _output_paths(out, overwrite)
  if fps < 1 or decode_latents < 1:
    raise GenerateError(f"--fps={fps} and --decode_latents={decode_latents} must be >= 1")
  if guidance is not None and guidance < 1.0:
    raise GenerateError(f"--guidance={guidance}: must be >= 1 (1 = the prompt alone)")
  text = check_lingbot_prompt(cfg, prompt, negative_prompt, states=states, negative_states=negative_states,
                              random_conditioning=random_conditioning)
  c2w, ks, n, labels, note = lingbot_camera(actions, poses, intrinsics, frames, int(cfg.sampling.get("frame_num", 81)))
  if note:
    log.info("camera: %s", note)
  seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
  rng = np.random.default_rng(seed)
  conds = None if text else lingbot_states(cfg, states, negative_states, random_conditioning, rng)
  if image:
    pixels, first_source = read_image(image), image
  elif random_conditioning:
    h, w = int(cfg.sampling.get("height", 480)), int(cfg.sampling.get("width", 832))
    pixels, first_source = rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "random (--random_conditioning)"
  else:
    raise GenerateError("no first frame: pass --image (LingBot-World is image-to-video)")
  smp = cfg.sampling
  try:
    if "height" in smp and "width" in smp:   # the pipeline's sizing rule (area = height * width), checked up front
      lh, lw = lingbot.latent_size(*pixels.shape[:2], int(smp.height) * int(smp.width), tuple(cfg.model.patch_size[1:]))
      height, width = lh * lingbot.PIXELS_PER_LATENT, lw * lingbot.PIXELS_PER_LATENT
    else:
      height, width = pixels.shape[:2]
      ph, pw = (lingbot.PIXELS_PER_LATENT * int(p) for p in cfg.model.patch_size[1:])
      if height % ph or width % pw:
        raise ValueError(f"without sampling.height/width to size it by, the image must be a multiple of {ph}x{pw} "
                         f"pixels, not {height}x{width}")
  except ValueError as e:
    raise GenerateError(f"--image={first_source}: {e}") from None
  weights = check_lingbot_weights(cfg, allow_random_weights or random_conditioning)

  mesh = mesh if mesh is not None else sharding.make_mesh(dict(cfg.mesh))
  if text:
    conds = lingbot_prompt_states(cfg, prompt, text, mesh=mesh)
  with phase("building LingBot-World", ", ".join(f"{k}: {v}" for k, v in weights.items())):
    try:
      pipe = lingbot.build_pipeline(cfg, mesh=mesh)
    except (ConversionError, ValueError) as e:
      raise GenerateError(f"LingBot weights: {str(e).splitlines()[0]}") from None
  pipe.vae_chunk_latents = decode_latents
  if guidance is not None:
    pipe.sampler = dataclasses.replace(pipe.sampler, guide_scale=(float(guidance), float(guidance)))
  log.info("first frame: %s; prompt states: %s", first_source, conds["source"])

  t0 = time.time()
  result = pipe.generate(pixels, conds["text_states"], conds["negative_states"], c2w, ks, n, seed=seed,
                         decode=False)
  latents = np.asarray(jax.device_get(result.latents))
  t_sample = time.time() - t0
  if not np.isfinite(latents).all():
    raise RuntimeError("the generated latents are not finite (the model or its inputs are broken); nothing written")
  t1 = time.time()
  with sharding.use_mesh(mesh):
    video = pipe.decode(result.latents)[0]                   # uint8 [F, H, W, 3]

  pid = os.getpid()
  tmp = {k: p.with_name(f".{p.stem}.tmp-{pid}{p.suffix}") for k, p in paths.items()}
  try:
    paths["video"].parent.mkdir(parents=True, exist_ok=True)
    with mp4_writer(tmp["video"], fps) as writer:
      for i, f in enumerate(video):
        writer.append_data(burn_label(f, labels[i]) if labels else f)
    np.save(tmp["latents"], latents)
    s = pipe.sampler
    summary = {
        "family": "lingbot", "video": str(paths["video"]), "latents": str(paths["latents"]),
        "frames": int(video.shape[0]), "latent_shape": list(latents.shape), "height": int(height),
        "width": int(width), "fps": fps, "seed": seed, "first_frame": first_source,
        "conditioning": conds["source"], "prompt": prompt,
        "negative_prompt": text["negative_prompt"] if text else None,
        "actions": actions, "poses": poses, "intrinsics": intrinsics,
        "camera": "none" if c2w is None else ("actions" if actions else "poses"), "camera_note": note,
        "guide_scale": list(s.guide_scale), "steps": s.steps, "shift": s.shift, "boundary": s.boundary,
        "weights": weights, "devices": len(mesh.devices.flat), "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "seconds": {"sample": round(t_sample, 2), "decode": round(time.time() - t1, 2),
                    "total": round(time.time() - t_start, 2)}}
    _commit(tmp, paths, summary)
  finally:
    for p in tmp.values():
      p.unlink(missing_ok=True)
  return summary


# ----------------------------------------------------------------------------- latents only
# The earlier latents-only smoke run (random states and first latent, no VAE, a fixed
# forward-then-turn camera): tests/test_inference_engine.py compares every engine caller against
# it. `generate_video` is the user-facing path.

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
  """Random stand-ins for the encoder states, keyed as `WorldPlayDiT.encode_text` names them."""
  r = random_states(cfg, mcfg, rng)
  return dict(text_states=r["text_states"], encoder_attention_mask=r["text_mask"],
              byt5_text_states=r["byt5_states"], byt5_text_mask=r["byt5_mask"], vision_states=r["vision_states"])


def encode_conditioning(model, conds: dict):
  """TextTokens of the conditioning states (`synthetic_conditioning`)."""
  return model.encode_text(*(jnp.asarray(conds[k]) for k in ("text_states", "encoder_attention_mask",
                                                             "byt5_text_states", "byt5_text_mask",
                                                             "vision_states")), jnp.zeros((1,)))


def make_inputs(cfg, mcfg: DiTConfig) -> dict:
  """The latents-only inputs, all drawn from `np.random.default_rng(cfg.seed)` in this order:
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
  """The chunk engine of `cfg.sampling` (retrieval points seeded with cfg.seed)."""
  return ChunkEngine.from_config(apply, cfg, retrieval_seed=cfg.seed)


def run(cfg, workdir: str) -> dict:
  """Latents only (`make_inputs`, `sampling.chunks` chunks): WORKDIR/latents.npz + summary.json."""
  run_config.validate(cfg, required=run_config.GENERATE_SECTIONS)
  run_config.check_workdir(workdir)
  mcfg = from_config(cfg.model)
  workdir = pathlib.Path(workdir)
  model = build_model(cfg, mcfg)
  workdir.mkdir(parents=True, exist_ok=True)
  apply, state = functional(model)
  inputs = make_inputs(cfg, mcfg)
  text = encode_conditioning(model, inputs["conditioning"])
  engine = make_engine(apply, cfg, mcfg)
  t0 = time.time()
  out = engine.generate(state, latents=inputs["latents"], cond=inputs["cond"], viewmats=inputs["w2c"][None],
                        Ks=inputs["Ks"], action=inputs["actions"][None], text=text)
  lat = np.asarray(out.latents)
  np.savez(workdir / "latents.npz", latents=lat, viewmats=inputs["w2c"], actions=inputs["actions"])
  summary = {"chunks": int(cfg.sampling.chunks), "latent_frames": int(lat.shape[2]), "steps": engine.steps,
             "model_passes": out.model_passes, "context_indices": out.context_indices,
             "seconds": round(time.time() - t0, 2), "finite": bool(np.isfinite(lat).all())}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  summary = generate_video(_CONFIG(), out=_OUT(), image=_IMAGE(), actions=_ACTIONS(), pose=_POSE(), frames=_FRAMES(),
                           seed=_SEED(), states=_STATES(), record=_RECORD(), random_conditioning=_RANDOM(),
                           checkpoint=_CHECKPOINT(), which=_WHICH(), guidance=_GUIDANCE(),
                           negative_states=_NEGATIVE(),
                           fps=_FPS(), decode_latents=_DECODE(), overwrite=_OVERWRITE(), poses=_POSES(),
                           intrinsics=_INTRINSICS(), allow_random_weights=_ALLOW_RANDOM(), prompt=_PROMPT(),
                           negative_prompt=_NEG_PROMPT(), text_encoder=_TEXT_ENCODER(), byt5=_BYT5(),
                           siglip=_SIGLIP(), tokenizer=_TOKENIZER(), max_text_tokens=_MAX_TEXT(), mode=_MODE(),
                           bi_chunk=_BI_CHUNK())
  s = summary["seconds"]
  what = f"{summary['chunks']} chunks" if "chunks" in summary else f"{summary['steps']} steps"
  print(f"wrote {summary['video']} ({summary['frames']} frames, {summary['width']}x{summary['height']}, "
        f"{what}; sampling {s['sample']} s, decoding {s['decode']} s), "
        f"{summary['latents']} and {pathlib.Path(summary['video']).with_suffix('.json')}")


if __name__ == "__main__":
  cli.run(main)
