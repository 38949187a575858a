"""The paper's long-horizon evaluation: action accuracy and quality of generated videos.

    python -m wc_jax.evaluate --config=configs/tiny.py --out=/tmp/wc_eval --frames=13,29 --limit=2
    python -m wc_jax.evaluate --config=configs/hunyuan8b.py --checkpoint=/runs/wc --which=ema \\
        --out=/runs/wc/eval --frames=125,253,381 --states=records

The set of videos is fixed: kind "basic" holds one action for the whole video (w, s, a, d,
left, right, up, down), kind "combined" a translation with a turn or two moves at once (w+right,
d+up, ...), as the paper reports its action accuracy on basic and combined actions separately.
Video i of a kind has the i-th action of the kind's list (cycling when --num is larger), the
noise seeded by (--seed, i) and the conditioning (encoder states and first latent) of example i
of --states: "synthetic" (random states drawn from the seed, as the trainer's synthetic data) or
"records" (the config's data.path / data.split, written by wc_jax.data.write_records).

Per video: the AR chunk engine (FOV context retrieval) generates the longest --frames under the
config's mesh, the VAE decodes it chunk by chunk, and `wc_jax.rewards.video_metrics` scores it
with the reward code: poses from the configured pose network -> labels -> exact (81-way) and
fine (mean of translation and rotation) accuracy, and the configured quality scorer's mean Q and
drift -mean|Q_k - Q(frame 0)| over frames 3::4, window by window as in training. An AR video's
prefix is the shorter video, so every shorter --frames is scored on the prefix.

What comes out, under --out:
  videos/<kind>-<i>/  latents.npy, scores.json (per-window scores; written last: a video with
                      it is done and a rerun skips it), thumbs.npy (small frames, for the sheet)
  results.json, results.md   mean and 95 % CI over videos per (kind, frames) and metric
  sheet.mp4                  the first --sheet videos of each kind side by side (a row per kind)
  setting.json               what the videos depend on; a rerun with another setting is refused
"""
from __future__ import annotations

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
from wc_jax.convert import dit as dit_convert
from wc_jax.convert import kinds as model_kinds
from wc_jax.convert import load_model
from wc_jax.convert.common import ConversionError, as_path
from wc_jax.data import trajectories
from wc_jax.inference import ChunkEngine, i2v_condition
from wc_jax.models.worldplay.config import DiTConfig, from_config
from wc_jax.models.worldplay.model import build, functional, randomize
from wc_jax.progress import phase
from wc_jax.rewards import video_metrics
from wc_jax.rl import config as run_config

log = logging.getLogger("wc_jax.evaluate")

ACTIONS = {
    "basic": ("w", "s", "a", "d", "left", "right", "up", "down"),
    "combined": ("w+right", "w+left", "s+right", "s+left", "d+up", "d+down", "a+up", "a+down",
                 "w+d", "w+a", "right+up", "left+down"),
}
KINDS = tuple(ACTIONS)
STATES = ("synthetic", "records")
TABLE_METRICS = ("exact", "fine", "translation", "rotation", "drift", "quality")
THUMB_HEIGHT = 96


_flag = cli.flag


_CONFIG = cli.config_flag("configs/tiny.py")
_OUT = _flag("string", "out", "/tmp/wc_jax_evaluate", "output folder (resumable: done videos are skipped)")
_CHECKPOINT = _flag("string", "checkpoint", "", "DiT weights: RL run, convert folder or reference folder")
_FRAMES = _flag("string", "frames", "125,253,381", "comma-separated video lengths (4T-3, T a multiple of the chunk)")
_KINDS = _flag("string", "kinds", "basic,combined", "comma-separated kinds: basic, combined")
_NUM = _flag("integer", "num", 0, "videos per kind (0: one per action of the kind)")
_LIMIT = _flag("integer", "limit", 0, "at most this many videos per kind (smoke runs; 0: no limit)")
_SEED = _flag("integer", "seed", None, "noise and conditioning seed (default: the config's seed)")
_STATES = _flag("string", "states", "synthetic", "conditioning: synthetic | records (data.path of the config)")
_SHEET = _flag("integer", "sheet", 4, "videos per kind on the side-by-side sheet (0: no sheet)")
if "which" not in flags.FLAGS:
  flags.DEFINE_enum("which", "ema", tuple(dit_convert.RL_WHICH), "RL checkpoint weights: ema | raw | policy")
_WHICH = lambda: flags.FLAGS.which  # noqa: E731


class EvaluateError(cli.UsageError):
  """Bad input to the evaluation: one line."""


# ----------------------------------------------------------------------------- the set

def _split(text, what: str) -> list[str]:
  if isinstance(text, (list, tuple)):
    return [str(x).strip() for x in text]
  items = [x.strip() for x in str(text).split(",") if x.strip()]
  if not items:
    raise EvaluateError(f"--{what}={text!r} is empty")
  return items


def parse_kinds(text) -> list[str]:
  out = _split(text, "kinds")
  for k in out:
    if k not in KINDS:
      raise EvaluateError(f"--kinds: unknown kind {k!r}; the kinds are {', '.join(KINDS)}")
  return list(dict.fromkeys(out))


def parse_frames(text, chunk: int) -> list[int]:
  """Video lengths in frames, each 4T-3 with T a positive multiple of the chunk."""
  out = []
  for item in _split(text, "frames"):
    try:
      f = int(item)
    except ValueError:
      raise EvaluateError(f"--frames: {item!r} is not a whole number of frames") from None
    if f < 1 or (f + 3) % 4 or ((f + 3) // 4) % chunk:
      k = max(1, round((f + 3) / (4 * chunk)))
      near = sorted({4 * chunk * j - 3 for j in (max(1, k - 1), k, k + 1)})
      raise EvaluateError(f"--frames: {f} is not a video length the model makes: the VAE makes 4T-3 frames "
                          f"from T latents and the model generates chunks of {chunk} latents, so lengths are "
                          f"{4 * chunk - 3}, {8 * chunk - 3}, ... (nearest: {', '.join(map(str, near))})")
    out.append(f)
  return sorted(set(out))


def video_plan(kinds, num: int = 0, limit: int = 0) -> list[tuple[str, int, str]]:
  """(kind, index, action key) of every video: `num` per kind (0: one per action), at most `limit`."""
  if num < 0 or limit < 0:
    raise EvaluateError(f"--num={num} and --limit={limit} must be >= 0")
  plan = []
  for kind in kinds:
    keys = ACTIONS[kind]
    n = num or len(keys)
    if limit:
      n = min(n, limit)
    plan += [(kind, i, keys[i % len(keys)]) for i in range(n)]
  return plan


def held_action(key: str, num_latents: int) -> trajectories.Trajectory:
  """`key` held for the whole video: latent 0 at rest, then num_latents-1 latents of the action
  (the inference CLI's 0.08 per latent and 3 degrees per latent)."""
  return trajectories.trajectory_from_string(f"{key}-{num_latents - 1}", num_latents)


# ----------------------------------------------------------------------------- setting

def _setting(cfg, checkpoint: str, which: str, seed: int, states: str) -> dict:
  """What the videos depend on (their lengths aside)."""
  def section(name):
    return json.loads(cfg[name].to_json_best_effort()) if name in cfg else None
  rewards = cfg.get("rewards", None)
  return {"checkpoint": str(as_path(checkpoint).resolve()) if checkpoint else cfg.model.get("checkpoint", ""),
          "which": which if checkpoint else "", "seed": seed, "states": states,
          "data": {k: cfg.data.get(k, "") for k in ("path", "split")} if states == "records" else None,
          "model": section("model"), "sampling": section("sampling"), "text": section("text"),
          "vae": section("vae"),
          "pose": json.loads(rewards.pose.to_json_best_effort()) if rewards is not None and "pose" in rewards else None,
          "quality": json.loads(rewards.quality.to_json_best_effort())
          if rewards is not None and "quality" in rewards else None,
          "hpsv3": json.loads(rewards.hpsv3.to_json_best_effort())
          if rewards is not None and "hpsv3" in rewards else None}


def _check_setting(out: pathlib.Path, setting: dict) -> None:
  path = out / "setting.json"
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError:
      raise EvaluateError(f"--out={out}: {path} is not readable JSON; use a new --out") from None
    diff = sorted(k for k in set(old) | set(setting) if old.get(k) != setting.get(k))
    if diff:
      raise EvaluateError(f"--out={out} holds videos of another setting (differs in: {', '.join(diff)}); "
                          f"use a new --out or delete it")
  else:
    _write_text(path, json.dumps(setting, indent=2, sort_keys=True))


def _write_text(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _save_npy(path: pathlib.Path, x: np.ndarray) -> None:
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
  np.save(tmp, x)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- models

def build_dit(cfg, mcfg: DiTConfig, checkpoint: str = "", which: str = "ema"):
  """The DiT: `checkpoint` (RL run, convert folder or reference folder; its model config must be the
  run's), else cfg.model.checkpoint, else a random init seeded with cfg.seed."""
  path = checkpoint or cfg.model.get("checkpoint", "")
  if not path:
    with phase("building the WorldPlay DiT", f"{mcfg.hidden_size} wide, {mcfg.depth} blocks, random weights"):
      model = build(mcfg, seed=cfg.seed)
      if cfg.model.get("init", "reference") == "random":
        randomize(model, cfg.seed)
    return model
  if not as_path(path).exists():
    raise EvaluateError(f"--checkpoint={path}: no such file or folder")
  try:
    step_dir = None if (as_path(path) / "wc_jax.json").exists() else dit_convert.rl_step_dir(path)
    if step_dir is not None:
      saved, want = dit_convert.rl_model_config(step_dir), mcfg.to_dict()
      diff = {k: (v, want[k]) for k, v in saved.items() if k not in dit_convert.RUNTIME_FIELDS and v != want.get(k)}
      if diff:
        raise EvaluateError(f"--checkpoint={step_dir} was trained with another model config; differences "
                            f"(checkpoint vs --config): {diff}")
      with phase("loading the WorldPlay DiT", f"{which} weights of RL checkpoint {step_dir}"):
        model_config, params, _ = dit_convert.params_from_rl_checkpoint(step_dir, which)
        return dit_convert.build_model(model_config, params, **want)
    with phase("loading the WorldPlay DiT", path):
      return load_model(model_kinds.DIT, path, **mcfg.to_dict())
  except (ConversionError, ValueError) as e:
    if isinstance(e, EvaluateError):
      raise
    raise EvaluateError(f"--checkpoint={path}: {str(e).splitlines()[0]}") from None


def conditioning(cfg, mcfg: DiTConfig, states: str, seed: int, count: int, num_latents: int) -> list:
  """`count` examples with text/byt5/vision states and a first latent [C, h, w]."""
  hw = (int(cfg.sampling.latent_height), int(cfg.sampling.latent_width))
  if states == "synthetic":
    from wc_jax.rl.data_source import SyntheticTrajectories
    it = SyntheticTrajectories(cfg, mcfg, hw, num_latents, seed)
    return [next(it) for _ in range(count)]
  import copy
  from wc_jax.rl.data_source import make_data
  rcfg = copy.deepcopy(cfg)
  with rcfg.unlocked():
    rcfg.data.source, rcfg.data.shuffle, rcfg.data.num_epochs = "records", False, 1
  try:
    it = make_data(rcfg, mcfg)
    out = []
    for _ in range(count):
      try:
        out.append(next(it))
      except StopIteration:
        break
  except (FileNotFoundError, ValueError) as e:
    raise EvaluateError(f"--states=records: {str(e).splitlines()[0]}") from None
  if not out:
    raise EvaluateError(f"--states=records: {cfg.data.get('path', '')} ({cfg.data.get('split', '')}) has no records")
  return out


def _thumbs(frames: np.ndarray) -> np.ndarray:
  """uint8 [F, h, w, 3] at most THUMB_HEIGHT high (even sizes, for the mp4 encoder)."""
  from PIL import Image
  f, h, w, _ = frames.shape
  s = min(1.0, THUMB_HEIGHT / h)
  th, tw = max(2, int(h * s) // 2 * 2), max(2, int(w * s) // 2 * 2)
  x = np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
  if (th, tw) == (h, w):
    return x
  return np.stack([np.asarray(Image.fromarray(im).resize((tw, th), Image.BILINEAR)) for im in x])


class _Runner:
  """The models, built once and only when some video is not cached yet."""

  def __init__(self, cfg, mcfg, checkpoint, which, mesh, model=None, pose_model=None, scorer=None):
    from wc_jax.rl.components import build_pose_model, build_quality_scorer, build_vae
    model = model if model is not None else build_dit(cfg, mcfg, checkpoint, which)
    self.apply, state = functional(model)
    del model
    self.mesh = mesh
    self.state = jax.device_put(state, sharding.state_shardings(state, mesh))
    self.engine = ChunkEngine.from_config(self.apply, cfg)
    self.chunk = int(mcfg.chunk_latents)
    try:
      with phase("building the VAE", cfg.vae.get("checkpoint", "") or "random weights"):
        self.vae = build_vae(cfg.vae, int(mcfg.latent_channels))
      with phase("building the pose model", cfg.rewards.pose.get("checkpoint", "") or "random weights"):
        self.pose = pose_model if pose_model is not None else build_pose_model(cfg.rewards.pose)
      with phase("building the quality scorer", cfg.rewards.quality.get("scorer", "clip")):
        self.scorer = scorer if scorer is not None else build_quality_scorer(cfg.rewards.quality, cfg.rewards)
    except (ConversionError, ValueError) as e:
      raise EvaluateError(f"reward models: {str(e).splitlines()[0]}") from None
    self._encode = jax.jit(lambda st, *a: self.apply(st, "encode_text", *a))

  def generate(self, example, traj, seed: int, index: int) -> np.ndarray:
    t = traj.num_latents
    first = np.asarray(example.first_latent, np.float32)
    c, h, w = first.shape
    noise = np.random.default_rng([seed, index]).standard_normal((1, c, t, h, w)).astype(np.float32)
    args = [jnp.asarray(example.text_states), jnp.asarray(example.text_mask), jnp.asarray(example.byt5_states),
            jnp.asarray(example.byt5_mask), jnp.asarray(example.vision_states), jnp.zeros((1,), jnp.float32)]
    if getattr(example, "vision_mask", None) is not None:
      args.append(jnp.asarray(example.vision_mask))
    w2c = traj.w2c.astype(np.float32)
    with sharding.use_mesh(self.mesh):
      text = self._encode(self.state, *args)
      out = self.engine.generate(self.state, latents=noise, cond=i2v_condition(first[None], t), viewmats=w2c[None],
                                 Ks=traj.intrinsics.astype(np.float32)[None],
                                 action=traj.actions.astype(np.float32)[None], text=text, w2c=w2c)
      lat = np.asarray(jax.device_get(out.latents))
    if not np.isfinite(lat).all():
      raise RuntimeError(f"video {index}: the generated latents are not finite")
    return lat

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """DiT latents [1, C, T, h, w] -> frames [4T-3, H, W, 3] in [0, 1], a chunk per VAE call (the causal
    cache carries over)."""
    from wc_jax.models import vae as vae_lib
    z = vae_lib.unscale_latents(self.vae.config, jnp.asarray(latents, jnp.float32))
    cache, parts = None, []
    for s in range(0, z.shape[2], self.chunk):
      video, cache = vae_lib.decode_chunk(self.vae, z[:, :, s:s + self.chunk], cache)
      parts.append(np.asarray(jnp.clip((jnp.moveaxis(video[0], 0, -1) + 1.0) / 2.0, 0.0, 1.0)))
    return np.concatenate(parts)

  def score(self, frames: np.ndarray, traj) -> list[dict]:
    # frames stay on the host: each window goes to the device on its own
    return video_metrics.score_windows(frames, traj.actions.astype(np.int32), self.pose, self.scorer,
                                       chunk=self.chunk)


# ----------------------------------------------------------------------------- table and sheet

def table(records: list[dict], kinds, frames: list[int]) -> dict:
  """{kind: {frames: {metric: {mean, ci95, n}}}} over the videos of each kind."""
  out: dict = {}
  for kind in kinds:
    mine = [r for r in records if r["kind"] == kind]
    out[kind] = {}
    for f in frames:
      per = [video_metrics.aggregate(r["windows"], (f + 3) // 4) for r in mine]
      out[kind][str(f)] = {m: video_metrics.mean_ci([p.get(m) for p in per]) for m in TABLE_METRICS}
  return out


def markdown(tab: dict, title: str) -> str:
  lines = [f"# {title}", "",
           "Mean ± 95 % CI over videos (Student t; the mean alone for one video). exact: 81-way action "
           "accuracy; fine: mean of translation and rotation accuracy; drift: -mean|Q_k - Q(frame 0)| and "
           "quality: mean Q, over frames 3::4.", "",
           "| kind | frames | videos | " + " | ".join(TABLE_METRICS) + " |",
           "|---|---:|---:|" + "---:|" * len(TABLE_METRICS)]
  for kind, per in tab.items():
    for f, row in per.items():
      cells = []
      for m in TABLE_METRICS:
        v = row[m]
        cells.append("—" if v["mean"] is None else f"{v['mean']:.3f}" if v["ci95"] is None
                     else f"{v['mean']:.3f} ± {v['ci95']:.3f}")
      lines.append(f"| {kind} | {f} | {row['exact']['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _label(frame: np.ndarray, text: str) -> np.ndarray:
  from PIL import Image, ImageDraw, ImageFont
  im = Image.fromarray(frame)
  try:
    font = ImageFont.load_default(size=max(8, frame.shape[0] // 8))
  except TypeError:   # Pillow < 10.1
    font = ImageFont.load_default()
  draw = ImageDraw.Draw(im)
  box = draw.textbbox((2, 1), text, font=font)
  draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
  draw.text((2, 1), text, fill=(255, 255, 255), font=font)
  return np.asarray(im)


def write_sheet(path: pathlib.Path, rows: list[list[tuple[str, np.ndarray]]], fps: int = 24) -> int:
  """An mp4 grid: a row per kind, a column per video, each tile labelled; returns the frame count."""
  import imageio.v2 as imageio
  tiles = [t for row in rows for _, t in row]
  if not tiles:
    return 0
  h, w = tiles[0].shape[1:3]
  n = max(t.shape[0] for t in tiles)
  cols = max(len(r) for r in rows)
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
  with warnings.catch_warnings():   # imageio-ffmpeg starts ffmpeg with a fork
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    writer = imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error")
    try:
      for i in range(n):
        grid = np.zeros((h * len(rows), w * cols, 3), np.uint8)
        for r, row in enumerate(rows):
          for c, (name, t) in enumerate(row):
            grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = _label(t[min(i, t.shape[0] - 1)], name)
        writer.append_data(grid)
    finally:
      writer.close()
  os.replace(tmp, path)
  return n


# ----------------------------------------------------------------------------- the job

def evaluate(cfg, *, out: str, checkpoint: str = "", which: str = "ema", frames="125,253,381",
             kinds="basic,combined", num: int = 0, limit: int = 0, seed: int | None = None,
             states: str = "synthetic", sheet: int = 4, mesh=None, model=None, pose_model=None, scorer=None,
             progress: bool = True) -> dict:
  """Generates (or reads from --out) every video of the set and writes the tables and the sheet.
  Returns a summary: computed / cached video counts, the table, the paths written. `model`,
  `pose_model`, `scorer`: modules to use instead of building them (library callers, tests)."""
  t_start = time.time()
  run_config.validate(cfg, required=run_config.GENERATE_SECTIONS + ("vae", "rewards"))
  mcfg = from_config(cfg.model)
  chunk = int(mcfg.chunk_latents)
  kinds = parse_kinds(kinds)
  frames = parse_frames(frames, chunk)
  if states not in STATES:
    raise EvaluateError(f"--states={states!r}: choose one of {', '.join(STATES)}")
  if sheet < 0:
    raise EvaluateError(f"--sheet={sheet} must be >= 0")
  if which not in dit_convert.RL_WHICH:
    raise EvaluateError(f"--which={which!r}: choose one of {', '.join(dit_convert.RL_WHICH)}")
  plan = video_plan(kinds, num, limit)
  seed = int(cfg.seed) if seed is None else int(seed)
  t_max = (max(frames) + 3) // 4
  out_p = pathlib.Path(out)
  if out_p.exists() and not out_p.is_dir():
    raise EvaluateError(f"--out={out} is a file; name a folder")
  if checkpoint and not as_path(checkpoint).exists():
    raise EvaluateError(f"--checkpoint={checkpoint}: no such file or folder")
  (out_p / "videos").mkdir(parents=True, exist_ok=True)
  _check_setting(out_p, _setting(cfg, checkpoint, which, seed, states))

  def done(kind, i):
    p = out_p / "videos" / f"{kind}-{i:03d}" / "scores.json"
    if not p.exists():
      return None
    try:
      rec = json.loads(p.read_text())
    except ValueError:
      return None
    return rec if rec.get("latents", 0) >= t_max else None

  records, todo = [], []
  for kind, i, key in plan:
    rec = done(kind, i)
    if rec is None:
      todo.append((kind, i, key))
    else:
      records.append(rec)
  log.info("%d videos: %d cached in %s, %d to generate (%d latents, %d frames each)", len(plan), len(records),
           out_p, len(todo), t_max, 4 * t_max - 3)
  if todo:
    from tqdm import tqdm
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(cfg.mesh))
    examples = conditioning(cfg, mcfg, states, seed, max(i for _, i, _ in todo) + 1, t_max)
    runner = _Runner(cfg, mcfg, checkpoint, which, mesh, model, pose_model, scorer)
    for kind, i, key in tqdm(todo, desc="videos", unit="video", disable=not progress):
      t0 = time.time()
      traj = held_action(key, t_max)
      lat = runner.generate(examples[i % len(examples)], traj, seed, i)
      video = runner.decode(lat)
      windows = runner.score(video, traj)
      d = out_p / "videos" / f"{kind}-{i:03d}"
      d.mkdir(parents=True, exist_ok=True)
      _save_npy(d / "latents.npy", lat)
      if i < sheet:
        _save_npy(d / "thumbs.npy", _thumbs(video))
      rec = {"kind": kind, "index": i, "action": key, "latents": t_max, "frames": 4 * t_max - 3,
             "example": i % len(examples), "seed": seed, "windows": windows,
             "seconds": round(time.time() - t0, 2)}
      _write_text(d / "scores.json", json.dumps(rec, indent=2))   # last: the video is done
      records.append(rec)
      whole = video_metrics.aggregate(windows)
      log.info("%s-%03d (%s): exact %.3f, fine %.3f in %.1f s", kind, i, key, whole["exact"], whole["fine"],
               rec["seconds"])
  order = {(k, i): n for n, (k, i, _) in enumerate(plan)}
  records.sort(key=lambda r: order[(r["kind"], r["index"])])

  tab = table(records, kinds, frames)
  title = f"wc_jax evaluation: {checkpoint or cfg.model.get('checkpoint', '') or 'random weights'}" + \
      (f" ({which})" if checkpoint else "")
  summary = {"title": title, "kinds": kinds, "frames": frames, "videos": len(plan), "computed": len(todo),
             "cached": len(plan) - len(todo), "seed": seed, "states": states, "table": tab,
             "per_video": [{"kind": r["kind"], "index": r["index"], "action": r["action"],
                            **{str(f): video_metrics.aggregate(r["windows"], (f + 3) // 4) for f in frames}}
                           for r in records]}
  paths = {"json": out_p / "results.json", "markdown": out_p / "results.md", "sheet": out_p / "sheet.mp4"}
  _write_text(paths["markdown"], markdown(tab, title))
  if sheet and (todo or not paths["sheet"].exists()):
    rows = []
    for kind in kinds:
      row = []
      for r in records:
        p = out_p / "videos" / f"{kind}-{r['index']:03d}" / "thumbs.npy"
        if r["kind"] == kind and r["index"] < sheet and p.exists():
          row.append((r["action"], np.load(p)))
      if row:
        rows.append(row)
    if rows:
      with phase("writing the video sheet", str(paths["sheet"])):
        write_sheet(paths["sheet"], rows)
  summary["paths"] = {k: str(v) for k, v in paths.items() if v.exists() or k == "json"}
  summary["seconds"] = round(time.time() - t_start, 2)
  _write_text(paths["json"], json.dumps(summary, indent=2))
  return summary


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  s = evaluate(_CONFIG(), out=_OUT(), checkpoint=_CHECKPOINT(), which=_WHICH(), frames=_FRAMES(), kinds=_KINDS(),
               num=_NUM(), limit=_LIMIT(), seed=_SEED(), states=_STATES(), sheet=_SHEET())
  print(markdown(s["table"], s["title"]))
  print(f"{s['videos']} videos ({s['computed']} generated, {s['cached']} cached) in {s['seconds']} s; wrote "
        f"{', '.join(s['paths'].values())}")


if __name__ == "__main__":
  cli.run(main)
