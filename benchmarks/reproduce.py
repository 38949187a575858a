"""The WorldCompass study in the synthetic world, end to end, on a CPU (issue 18's protocol).

    python benchmarks/reproduce.py [--workdir=/tmp/wc_repro] [--quick] [--config=configs/synthetic.py:lowpass]
        [--base_seeds=0] [--rl_seeds=0,1,2] [--eval_seed=0] [--trajectories=64] [--from_scratch]
        [--methods=wc,swirl_fixed,swirl_alt,rwml,wc+rwml]

1. base model per base seed: the committed checkpoint when one matches the config
   (benchmarks/assets/synthetic_base_seed<b>/: base seed 0 of the default `:lowpass` variant), else trained here (wc_jax.world.base_train;
   `--from_scratch` always retrains);
2. two IDMs on ground truth: the reward's (training scenes) and a second-opinion judge
   (other scenes, another seed);
3. the held-out evaluation set of `--eval_seed` (held-out scenes and trajectory seeds) and the
   render-and-compare judge's candidate renders (wc_jax.world.judge);
4. per base seed: the capability gate (base accuracy per primitive) and the headroom gate
   (best-of-G by reward, within-group reward-judge correlation);
5. per base seed x RL seed: WorldCompass RL, the shuffled-reward control (same seed, rewards
   permuted within each group) and supervised fine-tuning for the same wall time;
6. every model rolled out on the same held-out trajectories with the same noises; the table
   gives means and paired-bootstrap 95 % CIs (resampling runs and trajectories).

`--methods` picks the RL arms (default `wc`, the WorldCompass run above); every arm runs through
the same protocol (bases, seeds, data stream, held-out set, judge, CIs) and only its reward
differs (ARMS): `swirl_fixed` (the IDM reward alone, IDM fixed), `swirl_alt` (the same with SWIRL's
alternation, config section `swirl`), `rwml` (RWML's binarised sim-to-real reward with the
easy-group filter, `rewards.rwml`), `rwml_soft` (the same similarity, not binarised, no filter),
`rwml_psnr` (the PSNR to the real frames instead of an embedding's cosine, not binarised, no filter:
the reward with the best within-group correlation in `headroom.py --per_reward`), `wc+rwml` (the
WorldCompass rewards plus RWML). The shuffled
control and the equal-time SFT baseline belong to `wc`.

Every stage caches its output in the workdir (base*/, idm_*.npz, eval_*.npz, <run>/final,
evals/*.npz), so a rerun only redoes what is missing; evaluations are tied to their checkpoint's
bytes (`model_digest`) and runs to their base's.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from wc_jax.world import base_train as B  # noqa: E402
from wc_jax.world import data as D  # noqa: E402
from wc_jax.world import evaluate as E  # noqa: E402
from wc_jax.world import judge as J  # noqa: E402
from wc_jax.world import reward as R  # noqa: E402
from wc_jax.world import stats as S  # noqa: E402
from wc_jax.world.latent import PatchLatent  # noqa: E402

ASSETS = REPO / "benchmarks" / "assets"


def load_config(path: str):
  """`configs/x.py` or `configs/x.py:variant` (as ml_collections' config_flags reads it)."""
  path, _, variant = str(path).partition(":")
  spec = importlib.util.spec_from_file_location("wc_jax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def quick(cfg):
  """A minutes-long version (tests, notebook smoke runs): same pipeline, fewer steps."""
  cfg.world.train_clips = 96
  cfg.world.idm_clips = 96
  cfg.base.steps = 60
  cfg.base.restarts = ""          # one short cycle (a variant's restarts cover its own steps)
  cfg.base.log_every = 20
  cfg.idm.steps = 40
  cfg.rl.total_steps = 2
  cfg.rl.trajectories_per_step = 2
  cfg.rl.group_size = 4
  cfg.rl.best_of_n = 2
  cfg.eval.trajectories = 4
  cfg.eval.horizons = (1, 2)
  cfg.study.best_of = 2
  cfg.study.sft_max_steps = 20
  cfg.study.corrupt_steps = 10
  cfg.study.n_boot = 200
  return cfg


def params_of(cfg, checkpoint):
  from flax import nnx
  from wc_jax.convert.common import load_orbax
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional, load_params
  model = WorldPlayDiT(from_config(cfg.model), rngs=nnx.Rngs(0))
  load_params(model, load_orbax(checkpoint)[0])
  return functional(model)


def fingerprint(cfg) -> dict:
  """What a base checkpoint must agree on to be used: the world's look and motions, the latent and
  the model (not how many clips trained it, nor the judge's and evaluation's scenes: --quick
  uses a committed base too)."""
  skip = {"train_clips", "idm_clips", "judge_scenes", "eval_scenes"}
  return {"world": {k: v for k, v in cfg.world.to_dict().items() if k not in skip},
          "model": {k: v for k, v in cfg.model.to_dict().items() if k != "checkpoint"}}


def _jsonable(x):
  return json.loads(json.dumps(x, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _rounded(x, digits: int = 2):
  if isinstance(x, dict):
    return {k: _rounded(v, digits) for k, v in x.items()}
  return round(x, digits) if isinstance(x, float) else x


def base_dir_name(b: int) -> str:
  return "base" if b == 0 else f"base_seed{b}"


def stage_base(cfg, wd: pathlib.Path, b: int, log, from_scratch: bool = False) -> dict:
  """The base model of base seed `b`: {"model": checkpoint dir, "latent", "dir", "source"}."""
  asset = ASSETS / f"synthetic_base_seed{b}"
  if not from_scratch and (asset / "model" / "wc_jax.json").exists():
    meta = json.loads((asset / "study.json").read_text())
    if meta.get("fingerprint") == _jsonable(fingerprint(cfg)):
      log(f"base seed {b}: committed checkpoint {asset.relative_to(REPO)} ({meta.get('train', '')})")
      latent = PatchLatent.from_dict(json.loads((asset / "latent.json").read_text()))
      return {"model": asset / "model", "latent": latent, "dir": asset, "source": "committed", "name": base_dir_name(b),
              "tag": ""}
    log(f"base seed {b}: the committed checkpoint was trained for another world/model config; training here")
  d = wd / base_dir_name(b)
  if (d / "model" / "wc_jax.json").exists():
    log(f"base seed {b}: cached")
  else:
    c = copy.deepcopy(cfg)
    c.seed = int(b)
    t = time.time()
    B.train(c, str(d), log=log)
    (d / "study.json").write_text(json.dumps({"fingerprint": _jsonable(fingerprint(cfg)),
                                              "train": f"{c.base.steps} steps, {time.time() - t:.0f}s on this machine"}))
    log(f"base seed {b}: trained in {time.time() - t:.0f}s")
  latent = PatchLatent.from_dict(json.loads((d / "latent.json").read_text()))
  return {"model": d / "model", "latent": latent, "dir": d, "source": "trained", "name": base_dir_name(b), "tag": ""}


def train_clips(cfg, wd: pathlib.Path, b: int) -> D.Clips:
  """The training clips of base seed b (rendered once into its workdir folder)."""
  w = cfg.world
  return B.load_or_make_clips(wd / base_dir_name(b) / "train_clips.npz", w.train_clips, w.train_latents,
                              B.scene_range(w.train_scenes), int(b) * 100000, B.world_config(cfg))


def stage_corrupted(cfg, wd: pathlib.Path, base: dict, b: int, p: float, log) -> dict:
  """Setting (b): the base trained further on data whose labels AND camera poses are another
  clip's for a fraction p of chunks (`base.corrupt_poses`), so it follows commands less; RL
  and every baseline then start from it."""
  name = f"{base_dir_name(b)}_corrupt{p:g}"
  d = wd / name
  if (d / "model" / "wc_jax.json").exists():
    log(f"{name}: cached")
  else:
    c = copy.deepcopy(cfg)
    c.seed = int(b)
    c.base.label_noise, c.base.corrupt_poses = float(p), True
    t = time.time()
    B.train(c, str(d), steps=int(c.study.corrupt_steps), clips=train_clips(c, wd, b), init=str(base["model"]),
            lr=float(c.study.sft_lr), latent=base["latent"], log=log)
    log(f"{name}: {c.study.corrupt_steps} steps on corrupted labels and poses (p = {p:g}) in {time.time() - t:.0f}s")
  return {"model": d / "model", "latent": base["latent"], "dir": d, "source": "corrupted", "name": name,
          "tag": f"corrupt{p:g}_"}


def stage_idms(cfg, wd: pathlib.Path, log):
  w, wcfg = cfg.world, B.world_config(cfg)
  out = {}
  for name, seed, scenes, traj_seed, path in (
      ("reward", cfg.idm.reward_seed, B.scene_range(w.train_scenes), 0, wd / "base" / "train_clips.npz"),
      ("judge", cfg.idm.eval_seed, B.scene_range(w.judge_scenes), 20_000_000, wd / "judge_clips.npz")):
    f = wd / f"idm_{name}.npz"
    if f.exists():
      out[name] = R.load_idm(f, cfg)
      log(f"idm {name}: cached")
      continue
    n = w.train_clips if name == "reward" else w.idm_clips
    clips = B.load_or_make_clips(path, n, w.train_latents, scenes, traj_seed, wcfg)
    t = time.time()
    model, _ = R.train_idm(clips.frames, clips.actions, cfg, seed=seed, log=log)
    R.save_idm(model, f)
    out[name] = model
    log(f"idm {name}: trained in {time.time() - t:.0f}s")
  return out


def stage_eval_set(cfg, wd: pathlib.Path, eval_seed: int, num: int, latents: int, log):
  """Held-out clips of `eval_seed` and their candidate renders (cached together)."""
  f = wd / f"eval_e{eval_seed}_n{num}_l{latents}.npz"
  wcfg = B.world_config(cfg)
  if f.exists():
    z = np.load(f)
    clips = D.Clips(z["frames"], z["actions"], z["w2c"], z["Ks"], z["scenes"])
    renders = J.CandidateRenders(z["r_frames"], z["r_labels"], tuple(str(x) for x in z["r_names"]), z["r_commanded"])
    log(f"eval set {f.name}: cached")
    return clips, renders
  t = time.time()
  clips = E.eval_clips(cfg, eval_seed, num, latents)
  renders = J.candidate_renders(clips, wcfg)
  np.savez(f, frames=clips.frames, actions=clips.actions, w2c=clips.w2c, Ks=clips.Ks, scenes=clips.scenes,
           r_frames=renders.frames, r_labels=renders.labels, r_names=np.asarray(renders.names),
           r_commanded=renders.commanded)
  log(f"eval set {f.name}: {num} clips x {latents} latents and {len(renders.names)} candidate renders per step "
      f"in {time.time() - t:.0f}s")
  return clips, renders


def model_digest(checkpoint) -> str:
  """A digest of a checkpoint's bytes (every file under it, or the file): what a cached evaluation
  was computed from. "" when the path does not exist."""
  import hashlib
  root = pathlib.Path(checkpoint)
  files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.exists() else []
  h = hashlib.sha256()
  for p in files:
    h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
    h.update(p.read_bytes())
  return h.hexdigest()[:16] if files else ""


def cached_arrays(f: pathlib.Path, digest: str, log):
  """The cached arrays of `f` if they were computed from the model of `digest`, else None (a cache
  from another model, or from before digests were stored, is recomputed)."""
  if not f.exists():
    return None
  z = dict(np.load(f))
  if str(z.pop("model_digest", "")) == digest:
    return z
  log(f"{f.name}: cached from another model (or before model digests); recomputing")
  return None


def stage_evaluate(name: str, cfg, wd: pathlib.Path, checkpoint, latent, clips, renders, judge_idm, eval_seed: int,
                   log) -> dict:
  """Step metrics (E.step_metrics) of one model on the eval set, noise seed = eval seed (paired).
  Cached per name, and recomputed when the checkpoint's bytes differ from the cached one's."""
  n, length = clips.actions.shape
  f = wd / "evals" / f"{name}_e{eval_seed}_n{n}_l{length}.npz"
  digest = model_digest(checkpoint)
  m = cached_arrays(f, digest, log)
  if m is not None:
    return m
  t = time.time()
  apply, params = params_of(cfg, checkpoint)
  frames = E.rollout(apply, params, cfg, latent, clips, eval_seed)
  # the chained judge renders per video: over the RL horizon only (1x, the gate's horizon)
  m = E.step_metrics(frames, clips, renders, judge_idm, B.world_config(cfg),
                     chained_steps=cfg.model.chunk_latents * cfg.rl.max_clip - 1)
  m["frames_head"] = (np.clip(frames[:4], 0, 1) * 255).astype(np.uint8)
  f.parent.mkdir(exist_ok=True)
  np.savez(f, **m, model_digest=np.str_(digest))
  log(f"eval {name}: {time.time() - t:.0f}s; exact at {cfg.model.chunk_latents * cfg.rl.max_clip} latents "
      f"{100 * m['exact'][:, :cfg.model.chunk_latents * cfg.rl.max_clip - 1].mean():.1f}")
  return m


# RL arms: reward weights (None: the config's rewards.weights), whether SWIRL alternates the IDM, and
# overrides of the rewards.rwml section
ARMS = {
    "wc": (None, False, {}),
    "swirl_fixed": ({"idm": 1.0}, False, {}),
    "swirl_alt": ({"idm": 1.0}, True, {}),
    "rwml": ({"rwml": 1.0}, False, {}),
    "rwml_soft": ({"rwml": 1.0}, False, {"binarize": False, "filter_easy": False}),
    "rwml_psnr": ({"rwml": 1.0}, False, {"metric": "psnr", "binarize": False, "filter_easy": False}),
    "wc+rwml": ("+rwml", False, {}),
}
ARM_HEADS = {"swirl_fixed": "SWIRL, fixed IDM", "swirl_alt": "SWIRL, alternating IDM", "rwml": "RWML",
             "rwml_soft": "RWML, unbinarised", "rwml_psnr": "RWML, pixel PSNR", "wc+rwml": "WorldCompass + RWML"}


def arm_weights(cfg, arm: str) -> dict:
  w = ARMS[arm][0]
  base = {k: float(v) for k, v in cfg.rewards.weights.items()}
  if w is None:
    return base
  if w == "+rwml":
    return {**base, "rwml": 1.0}
  return dict(w)


def arm_config(cfg, arm: str):
  """A copy of `cfg` with the arm's reward weights and rewards.rwml overrides (validated)."""
  c = copy.deepcopy(cfg)
  c.rewards.weights = type(c.rewards.weights)(arm_weights(cfg, arm))
  for k, v in ARMS[arm][2].items():
    c.rewards.rwml[k] = v
  R.rwml_options(c.rewards.rwml)
  return c


def parse_methods(text: str) -> list[str]:
  out = [m.strip() for m in text.split(",") if m.strip()]
  bad = [m for m in out if m not in ARMS]
  if bad or not out:
    raise SystemExit(f"reproduce: --methods takes a comma-separated subset of {', '.join(ARMS)}; got {text!r}")
  return list(dict.fromkeys(out))


def seconds_per_step(rd: pathlib.Path, seconds: float, steps: int) -> float:
  """Median wall time of an RL step (rollout + rewards, an IDM phase included, + update) after the
  first (compilation); the run's mean when it had one step."""
  f = rd / "metrics.jsonl"
  if f.exists():
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    t = [r.get("time_rollout", 0) + r.get("time_reward", 0) + r.get("time_update", 0) for r in rows[1:]]
    if t:
      return float(np.median(t))
  return seconds / max(1, steps)


def step_seconds(cfg, wd: pathlib.Path, run: dict, kind: str, b: int, s: int, tag: str = "") -> float:
  """A finished run's seconds per RL step (from its done.json, else from its metrics)."""
  if "seconds_per_step" in run:
    return float(run["seconds_per_step"])
  return seconds_per_step(wd / run_name(kind, b, s, tag), float(run["seconds"]), int(cfg.rl.total_steps))


def run_name(kind: str, b: int, s: int, tag: str = "") -> str:
  """Run folders: rl_seed<s> / shuffled_seed<s> / sft_seed<s> for base seed 0, base<b>_... otherwise
  (setting (b): prefixed by corrupt<p>_)."""
  return tag + (f"base{b}_" if b else "") + f"{kind}_seed{s}"


def arm_kind(arm: str) -> str:
  """Run-folder kind of an arm: "rl" for WorldCompass (the folders of earlier studies), else the arm."""
  return "rl" if arm == "wc" else arm.replace("+", "_")


def stage_rl(cfg, wd: pathlib.Path, base: dict, idm, b: int, seed: int, log, shuffled: bool = False,
             arm: str = "wc") -> dict:
  """One RL run of an arm (or the shuffled-reward control of `wc`): {"model": EMA checkpoint,
  "seconds", "seconds_per_step"}. `swirl_alt` trains its own copy of the reward IDM."""
  rd = wd / run_name("shuffled" if shuffled else arm_kind(arm), b, seed, base.get("tag", ""))
  done = rd / "done.json"
  base_digest = model_digest(base["model"])
  if done.exists():   # runs of earlier studies have no seconds_per_step (see step_seconds) nor base_digest
    info = json.loads(done.read_text())
    if info.get("base_digest", base_digest) != base_digest:
      raise SystemExit(f"reproduce: {rd} was trained from another base model than {base['model']}; use a fresh "
                       f"--workdir (or remove that run) so the study does not mix bases")
    info.pop("base_digest", None)
    return {"model": rd / "final", **info}
  from wc_jax.rl.trainer import Trainer
  c = arm_config(cfg, arm)
  c.model.checkpoint = str(pathlib.Path(base["model"]).absolute())
  c.seed = int(seed)
  weights, alternate = arm_weights(cfg, arm), ARMS[arm][1]
  if alternate:
    c.swirl.enabled = True
    idm = R.load_idm(wd / "idm_reward.npz", c)     # a fresh copy: the alternation trains it in place
  latent = base["latent"]
  data = D.WorldTrajectories(latent, c.model, c.text, c.model.chunk_latents * c.rl.max_clip,
                             B.scene_range(c.world.train_scenes), 50_000_000 + 1000 * seed, B.world_config(c))
  stage = R.make_reward_stage(latent, idm, weights, rwml=c.rewards.get("rwml", None))
  stage = R.make_swirl_stage(stage, idm, c, log=log) if alternate else stage
  if shuffled:
    stage = R.ShuffledRewardStage(stage, seed=1_000 + seed)
  trainer = Trainer(c, str(rd), reward_stage=stage, data=data)
  t = time.time()
  trainer.run()
  seconds = time.time() - t
  B.save_params(trainer.state.ema, rd / "final", c, {"rl_steps": int(c.rl.total_steps), "shuffled": shuffled,
                                                      "arm": arm})
  per_step = seconds_per_step(rd, seconds, int(c.rl.total_steps))
  done.write_text(json.dumps({"seconds": seconds, "seconds_per_step": per_step, "arm": arm, "weights": weights,
                              "base_digest": base_digest}))
  log(f"{rd.name}: {c.rl.total_steps} steps x {c.rl.trajectories_per_step} trajectories in {seconds:.0f}s "
      f"({per_step:.2f}s per step after the first)")
  return {"model": rd / "final", "seconds": seconds, "seconds_per_step": per_step}


def stage_sft(cfg, wd: pathlib.Path, base: dict, b: int, seed: int, seconds: float, log, corrupt: float = 0.0) -> dict:
  """Supervised fine-tuning of the base on ground truth for `seconds` of wall time (the matching
  RL run's): the equal-compute baseline; `corrupt` > 0 trains on the corrupted data instead."""
  rd = wd / run_name("sft_corrupt" if corrupt else "sft", b, seed, base.get("tag", ""))
  done = rd / "done.json"
  if done.exists():
    return {"model": rd / "model", **json.loads(done.read_text())}
  c = copy.deepcopy(cfg)
  c.seed = int(seed)
  if corrupt:
    c.base.label_noise, c.base.corrupt_poses = float(corrupt), True
  t = time.time()
  out = B.train(c, str(rd), steps=int(c.study.sft_max_steps), clips=train_clips(c, wd, b), init=str(base["model"]),
                lr=float(c.study.sft_lr), latent=base["latent"], seconds=float(seconds), log=lambda m: None)
  done.write_text(json.dumps({"seconds": time.time() - t, "steps": len(out["losses"])}))
  log(f"{rd.name}: {len(out['losses'])} supervised steps in {time.time() - t:.0f}s (budget {seconds:.0f}s)")
  return {"model": rd / "model", "seconds": time.time() - t, "steps": len(out["losses"])}


STAGES = ("rl", "shuffled", "sft", "sft_corrupt", "best_of")   # what --skip can leave out


def check_corrupt(p: float, prog: str) -> None:
  """--corrupt's range, checked before any stage runs (a base can take an hour to train)."""
  if not 0.0 <= p < 1.0:
    raise SystemExit(f"{prog}: --corrupt must be in [0, 1), got {p}")


def sft_stages(skip: set, corrupt: float) -> list[tuple[str, float]]:
  """The SFT baselines to run, as (run kind, corruption): clean data, and in setting (b) the
  corrupted data too; "sft" in `skip` drops both, "sft_corrupt" only the second."""
  out = [] if "sft" in skip else [("sft", 0.0)] + ([("sft_corrupt", float(corrupt))] if corrupt else [])
  return [(k, p) for k, p in out if k not in skip]


def best_of_seed(eval_seed: int, i: int) -> int:
  """Noise seed of best-of-G candidate i (every scorer of the candidates uses the same noises)."""
  return 1_000_000 + 1000 * eval_seed + i


def stage_best_of(cfg, wd: pathlib.Path, base: dict, b: int, idms, clips, renders, eval_seed: int, log) -> dict:
  """G candidates of the base per held-out trajectory at the RL horizon, ranked by the RL's
  own selection score (z-scored rewards, weighted): best-of-G baseline and headroom gate."""
  import jax
  import jax.numpy as jnp
  from wc_jax.rewards.advantages import prepare_grpo
  from wc_jax.rewards.idm import idm_reward
  g = int(cfg.study.best_of)
  h = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  n = len(clips.actions)
  f = wd / "evals" / f"{base['name']}_bestof{g}_e{eval_seed}_n{n}_h{h}.npz"
  digest = model_digest(base["model"])
  cached = cached_arrays(f, digest, log)
  if cached is not None:
    return cached
  t = time.time()
  sub = D.Clips(clips.frames[:, :h], clips.actions[:, :h], clips.w2c[:, :h], clips.Ks[:, :h], clips.scenes)
  apply, params = params_of(cfg, base["model"])
  acts = jnp.asarray(sub.actions, jnp.int32)
  rewards = {k: [] for k in cfg.rewards.weights}
  exact = []
  for i in range(g):
    frames = E.rollout(apply, params, cfg, base["latent"], sub, best_of_seed(eval_seed, i))
    fr = jnp.asarray(frames)
    if "idm" in rewards:
      rewards["idm"].append(np.asarray(jax.vmap(lambda x, a: idm_reward(x, a, idms["reward"]))(fr, acts)))
    if "drift" in rewards:
      rewards["drift"].append(np.asarray(jax.vmap(R.drift_reward)(fr, fr[:, 0])))
    exact.append(100.0 * E.step_metrics(frames, sub, renders)["exact"][:, :h - 1].mean(1))
  r = {k: jnp.asarray(np.stack(v).T) for k, v in rewards.items()}           # [N, G]
  grpo = prepare_grpo(r, {k: float(v) for k, v in cfg.rewards.weights.items()}, std_type="group", best_of_n=None)
  out = {"score": np.asarray(grpo.combined).T, "exact": np.stack(exact)}     # [G, N]
  f.parent.mkdir(exist_ok=True)
  np.savez(f, **out, model_digest=np.str_(digest))
  log(f"best-of-{g} of {base['name']}: {time.time() - t:.0f}s")
  return out


# ----------------------------------------------------------------------------- table

METRICS = {"exact": ("exact action acc, render judge (%)", 1),
           "step_exact": ("per-step exact acc, chained render judge (%)", 1),
           "fine": ("fine action acc, render judge (%)", 1),
           "idm_exact": ("exact action acc, IDM judge (%)", 1), "psnr": ("PSNR to GT (dB)", 2),
           "ssim": ("SSIM to GT", 3), "detail": ("detail ratio", 3)}


def _ci(d, digits):
  m, lo, hi = d
  return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def table(per: dict, horizons, h_rl: int, ceiling: dict, n_boot: int, step_time: dict | None = None) -> str:
  """per[method][horizon][metric] -> [R, N] per-trajectory arrays (R runs; base/best-of: one row
  per base seed, broadcast to the runs of that base seed by the caller). step_time[method]: seconds
  per RL step of each run (the last row)."""
  order = ("clean_base", "base", "best_of", "sft", "sft_corrupt", "shuffled", "rl") + tuple(
      arm_kind(a) for a in ARMS if a != "wc")
  methods = [m for m in order if m in per]
  heads = {"clean_base": "clean base", "base": "base", "best_of": "best-of-G (reward)", "sft": "SFT (equal time)",
           "sft_corrupt": "SFT on corrupted data", "shuffled": "shuffled RL", "rl": "WorldCompass RL",
           **{arm_kind(a): h for a, h in ARM_HEADS.items()}}
  rows = ["| metric | horizon | " + " | ".join(heads[m] for m in methods) +
          " | RL − base [95 % CI] | RL − shuffled [95 % CI] | RL − SFT [95 % CI] | judge on GT |",
          "|---|---|" + "---|" * (len(methods) + 4)]
  for key, (label, dg) in METRICS.items():
    for h in horizons:
      if key not in per["base"][h]:
        continue
      cells = []
      for m in methods:
        v = per[m].get(h, {}).get(key)
        cells.append("–" if v is None else f"{np.mean(v):.{dg}f}")
      diffs = []
      for other in ("base", "shuffled", "sft"):
        a, bb = per.get("rl", {}).get(h, {}).get(key), per.get(other, {}).get(h, {}).get(key)
        diffs.append("–" if a is None or bb is None else _ci(S.paired_bootstrap(a, bb, n_boot=n_boot), dg))
      gt = ceiling.get(h, {}).get(key) if key in ("exact", "step_exact", "fine", "idm_exact") else None
      rows.append(f"| {label} | {h} ({h // h_rl}×) | " + " | ".join(cells) + " | " + " | ".join(diffs) +
                  f" | {'–' if gt is None else f'{np.mean(gt):.{dg}f}'} |")
  if step_time:
    cells = ["–" if not step_time.get(m) else f"{np.mean(step_time[m]):.2f}" for m in methods]
    rows.append("| wall time per RL step (s) | – | " + " | ".join(cells) + " | – | – | – | – |")
  arms = [m for m in methods if m in {arm_kind(a) for a in ARMS if a != "wc"}]
  if arms:   # each extra arm against the base and WorldCompass RL, paired like the columns above
    rows += ["", "| metric | horizon | " + " | ".join(f"{heads[m]} − base [95 % CI] | {heads[m]} − RL [95 % CI]"
                                                     for m in arms) + " |", "|---|---|" + "---|---|" * len(arms)]
    for key, (label, dg) in METRICS.items():
      for h in horizons:
        if key not in per["base"][h]:
          continue
        cells = []
        for m in arms:
          a = per[m].get(h, {}).get(key)
          for other in ("base", "rl"):
            bb = per.get(other, {}).get(h, {}).get(key)
            cells.append("–" if a is None or bb is None else _ci(S.paired_bootstrap(a, bb, n_boot=n_boot), dg))
        rows.append(f"| {label} | {h} ({h // h_rl}×) | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def save_gifs(wd: pathlib.Path, gt, before, after, n: int = 4):
  """videos/compare_i.gif: ground truth | base | RL, side by side, 4x upscaled."""
  from PIL import Image
  (wd / "videos").mkdir(exist_ok=True)
  for i in range(min(n, len(gt), len(before), len(after))):
    row = np.concatenate([gt[i], before[i], after[i]], axis=2)
    row = np.repeat(np.repeat(row, 4, 1), 4, 2)
    imgs = [Image.fromarray(f) for f in row]
    imgs[0].save(wd / "videos" / f"compare_{i}.gif", save_all=True, append_images=imgs[1:], duration=250, loop=0)


def _seeds(text: str) -> list[int]:
  try:
    out = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise SystemExit(f"reproduce: seeds must be comma-separated integers, got {text!r}") from None
  if not out or min(out) < 0:
    raise SystemExit(f"reproduce: need one or more non-negative seeds, got {text!r}")
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.py") + ":lowpass",
                  help="path[:variant]; the default variant has a committed base (benchmarks/assets)")
  ap.add_argument("--workdir", default="/tmp/wc_repro")
  ap.add_argument("--quick", action="store_true", help="minutes-long smoke version")
  ap.add_argument("--base_seeds", default="0", help="comma-separated base-model seeds")
  ap.add_argument("--rl_seeds", default="0,1,2", help="comma-separated RL seeds (each also seeds its controls)")
  ap.add_argument("--eval_seed", type=int, default=0, help="held-out scene/trajectory/noise seed of the evaluation")
  ap.add_argument("--trajectories", type=int, default=0, help="held-out trajectories (default: eval.trajectories)")
  ap.add_argument("--from_scratch", action="store_true", help="train the base here even if a committed one matches")
  ap.add_argument("--skip", default="", help=f"comma-separated stages to leave out: {', '.join(STAGES)} (sft: "
                  "both SFT baselines; sft_corrupt: only setting (b)'s SFT on corrupted data)")
  ap.add_argument("--methods", default="wc", help=f"comma-separated RL arms: {', '.join(ARMS)} (default wc: "
                  "WorldCompass; its shuffled control and SFT baseline run with it)")
  ap.add_argument("--gates_only", action="store_true", help="stop after the capability and headroom gates")
  ap.add_argument("--corrupt", type=float, default=0.0,
                  help="setting (b): first train each base further with labels AND poses corrupted for this fraction "
                       "of chunks (study.corrupt_steps steps); RL and the baselines start from that model")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  t0 = time.time()
  cfg = load_config(args.config)
  if args.quick:
    cfg = quick(cfg)
    if args.rl_seeds == "0,1,2":
      args.rl_seeds = "0"
  base_seeds, rl_seeds = _seeds(args.base_seeds), _seeds(args.rl_seeds)
  check_corrupt(args.corrupt, "reproduce")
  skip = {s for s in args.skip.split(",") if s}
  if skip - set(STAGES):
    raise SystemExit(f"reproduce: --skip takes {', '.join(STAGES)}; got {sorted(skip)}")
  methods = parse_methods(args.methods)
  if "wc" not in methods:
    skip |= {"rl", "shuffled"}   # the control and the SFT budget are WorldCompass's
  if "rl" in skip:
    skip |= {"sft"}            # SFT's budget is the RL run's time
  n_traj = int(args.trajectories or cfg.eval.trajectories)
  wd = pathlib.Path(args.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  logf = open(wd / "reproduce.log", "a")

  def log(msg):
    line = f"[{time.time() - t0:6.0f}s] {msg}"
    print(line, flush=True)
    logf.write(line + "\n")
    logf.flush()

  h_rl = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  horizons = [h_rl * int(k) for k in cfg.eval.horizons]
  clean = {b: stage_base(cfg, wd, b, log, args.from_scratch) for b in base_seeds}
  # the models RL and the baselines start from: the base, or in setting (b) its corrupted version
  bases = {b: stage_corrupted(cfg, wd, clean[b], b, args.corrupt, log) for b in base_seeds} if args.corrupt else clean
  idms = stage_idms(cfg, wd, log)
  clips, renders = stage_eval_set(cfg, wd, args.eval_seed, n_traj, max(horizons), log)
  gt = E.step_metrics(clips.frames, clips, renders, idms["judge"], B.world_config(cfg), chained_steps=h_rl - 1)
  ceiling = {h: E.per_trajectory(gt, h) for h in horizons}

  def evaluate(model: dict, checkpoint=None, name=None):
    return stage_evaluate(name or model["name"], cfg, wd, checkpoint or model["model"], model["latent"], clips, renders,
                          idms["judge"], args.eval_seed, log)

  # gates, per base seed: capability of the (clean) base, headroom of the model RL starts from
  gates = {}
  for b, base in bases.items():
    m = evaluate(clean[b])
    prim = J.per_primitive(m["exact"][:, :h_rl - 1], renders)
    gates[b] = {"exact_1x": 100.0 * float(m["exact"][:, :h_rl - 1].mean()), "per_primitive": prim,
                "capable": bool(100.0 * m["exact"][:, :h_rl - 1].mean() >= 60.0 and min(prim.values()) >= 40.0)}
    if "step_exact" in m:   # the chained judge (an evaluation cached before it existed has none)
      gates[b]["step_exact_1x"] = 100.0 * float(m["step_exact"][:, :h_rl - 1].mean())
      gates[b]["per_primitive_step"] = J.per_primitive(m["step_exact"][:, :h_rl - 1], renders)
    if args.corrupt:
      gates[b]["start_exact_1x"] = 100.0 * float(evaluate(base)["exact"][:, :h_rl - 1].mean())
    if "best_of" not in skip:
      bo = stage_best_of(cfg, wd, base, b, idms, clips, renders, args.eval_seed, log)
      hb = S.headroom(bo["score"], bo["exact"])
      gates[b]["headroom"] = hb
      gates[b]["headroom_ok"] = bool(hb["best_by_reward"] - hb["mean"] >= 25.0 and hb["within_corr"] >= 0.5)
    log(f"gates of base seed {b}: " + json.dumps(_rounded(gates[b])))

  per: dict = {}
  step_time: dict = {}

  def add(method, h, arrays_by_run):
    per.setdefault(method, {}).setdefault(h, {})
    for key in arrays_by_run[0]:
      per[method][h][key] = np.stack([a[key] for a in arrays_by_run])

  runs = [(b, s) for b in base_seeds for s in rl_seeds]
  base_m = {b: evaluate(bases[b]) for b in base_seeds}
  for h in horizons:
    add("base", h, [E.per_trajectory(base_m[b], h) for b, _ in runs])
    if args.corrupt:
      add("clean_base", h, [E.per_trajectory(evaluate(clean[b]), h) for b, _ in runs])
  if "best_of" not in skip:
    bo = {b: stage_best_of(cfg, wd, bases[b], b, idms, clips, renders, args.eval_seed, log) for b in base_seeds}
    picks = {b: bo[b]["exact"][bo[b]["score"].argmax(0), np.arange(n_traj)] for b in base_seeds}
    per.setdefault("best_of", {})[h_rl] = {"exact": np.stack([picks[b] for b, _ in runs])}
  if not args.gates_only:
    extra = [arm_kind(a) for a in methods if a != "wc"]
    evals: dict = {k: [] for k in ("rl", "shuffled", "sft", "sft_corrupt", *extra)}
    rl_time = {}
    for b, s in runs:
      tag = bases[b]["tag"]
      for kind in ("rl", "shuffled"):
        if kind in skip:
          continue
        r = stage_rl(cfg, wd, bases[b], idms["reward"], b, s, log, shuffled=kind == "shuffled")
        rl_time[(b, s)] = rl_time.get((b, s), r["seconds"])
        step_time.setdefault(kind, []).append(step_seconds(cfg, wd, r, kind, b, s, tag))
        evals[kind].append(evaluate(bases[b], r["model"], run_name(kind, b, s, tag)))
      for arm in methods:
        if arm == "wc":
          continue
        r = stage_rl(cfg, wd, bases[b], idms["reward"], b, s, log, arm=arm)
        step_time.setdefault(arm_kind(arm), []).append(step_seconds(cfg, wd, r, arm_kind(arm), b, s, tag))
        evals[arm_kind(arm)].append(evaluate(bases[b], r["model"], run_name(arm_kind(arm), b, s, tag)))
      for kind, p in sft_stages(skip, args.corrupt):
        r = stage_sft(cfg, wd, bases[b], b, s, rl_time[(b, s)], log, corrupt=p)
        evals[kind].append(evaluate(bases[b], r["model"], run_name(kind, b, s, tag)))
    for kind, ms in evals.items():
      if ms:
        for h in horizons:
          add(kind, h, [E.per_trajectory(m, h) for m in ms])
    if evals["rl"]:
      save_gifs(wd, (np.clip(clips.frames[:4], 0, 1) * 255).astype(np.uint8), base_m[base_seeds[0]]["frames_head"],
                evals["rl"][0]["frames_head"])
  md = table(per, horizons, h_rl, ceiling, int(cfg.study.n_boot), step_time)
  total = time.time() - t0
  cmd = ("python benchmarks/reproduce.py" + (" --quick" if args.quick else "") + f" --workdir={args.workdir}"
         f" --base_seeds={args.base_seeds} --rl_seeds={args.rl_seeds} --eval_seed={args.eval_seed}"
         + (f" --config={args.config}" if args.config != ap.get_default("config") else "")
         + (f" --trajectories={args.trajectories}" if args.trajectories else "")
         + (" --from_scratch" if args.from_scratch else "") + (f" --skip={args.skip}" if args.skip else "")
         + (" --gates_only" if args.gates_only else "") + (f" --corrupt={args.corrupt:g}" if args.corrupt else "")
         + (f" --methods={args.methods}" if args.methods != "wc" else ""))
  gate_md = ["| base seed | exact @1× (%) | per primitive exact @1× (%) | capable (≥ 60, each ≥ 40) | "
             "per-step exact @1×, chained judge (%) | per primitive, chained (%) | "
             "best-of-G by reward − mean | within-group corr | headroom ok (≥ +25, ≥ 0.5) |",
             "|---|---|---|---|---|---|---|---|---|"]
  for b, gt_ in gates.items():
    hb = gt_.get("headroom")
    chained = ("– | –" if "step_exact_1x" not in gt_ else f"{gt_['step_exact_1x']:.1f} | "
               + ", ".join(f"{k} {v:.0f}" for k, v in gt_["per_primitive_step"].items()))
    gate_md.append(f"| {b} | {gt_['exact_1x']:.1f} | " + ", ".join(f"{k} {v:.0f}" for k, v in gt_["per_primitive"].items())
                   + f" | {'yes' if gt_['capable'] else 'no'} | {chained} | "
                   + ("– | – | –" if hb is None else f"{hb['best_by_reward'] - hb['mean']:+.1f} (mean {hb['mean']:.1f}, "
                      f"oracle {hb['oracle']:.1f}) | {hb['within_corr']:.2f} | {'yes' if gt_['headroom_ok'] else 'no'}")
                   + " |")
  if args.corrupt:
    gate_md.append("\nsetting (b), p = " + f"{args.corrupt:g}: exact @1× of the corrupted start model " +
                   ", ".join(f"base seed {b} {g_['start_exact_1x']:.1f}" for b, g_ in gates.items()) +
                   " (headroom measured on it)")
  text = ("\n".join(gate_md) + "\n\n" + md +
          f"\n\nRL horizon {h_rl} latents; base seeds {base_seeds} x RL seeds {rl_seeds}; eval seed {args.eval_seed}: "
          f"{n_traj} held-out trajectories, one noise per trajectory shared by every model; best-of-G with "
          f"G = {cfg.study.best_of}; wall time {total / 60:.1f} min\ncommand: {cmd}")
  print("\n" + text)
  (wd / "results.json").write_text(json.dumps(
      {"gates": {str(k): v for k, v in gates.items()}, "horizons": horizons, "seconds": total, "command": cmd,
       "seconds_per_rl_step": {k: float(np.mean(v)) for k, v in step_time.items()},
       "means": {m: {str(h): {k: float(np.mean(v)) for k, v in d.items()} for h, d in hs.items()} for m, hs in per.items()}},
      indent=1, default=float))
  (wd / "results.md").write_text(text + "\n")
  return {"gates": gates, "per": per, "table": md}


def commit_base(wd: pathlib.Path, cfg, b: int, command: str) -> pathlib.Path:
  """Copies a workdir's base model into benchmarks/assets (the committed capable base)."""
  src = wd / base_dir_name(b)
  dst = ASSETS / f"synthetic_base_seed{b}"
  if dst.exists():
    shutil.rmtree(dst)
  shutil.copytree(src / "model", dst / "model")
  shutil.copy(src / "latent.json", dst / "latent.json")
  shutil.copy(src / "base_metrics.jsonl", dst / "base_metrics.jsonl")
  meta = json.loads((src / "study.json").read_text()) if (src / "study.json").exists() else {}
  (dst / "study.json").write_text(json.dumps({"fingerprint": _jsonable(fingerprint(cfg)), "command": command,
                                              "train": meta.get("train", "")}, indent=1))
  return dst


if __name__ == "__main__":
  main()
