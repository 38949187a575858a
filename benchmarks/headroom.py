"""How much can RL gain? Best-of-G selection by the reward, scored by the render-and-compare judge.

WorldCompass RL distils the reward's preference among G candidates into the policy, so
the judge's accuracy of the candidate the reward ranks first (best-of-G) is a rough
ceiling for what one round of RL can reach, and the within-group correlation between
reward and judge (what a group advantage sees) says whether the reward is informative.
The study's headroom gate: best-of-G by reward >= +25 points over a random candidate and
within-group correlation >= 0.5. Uses benchmarks/reproduce.py's cached stages (the base
model: the workdir's or the committed one; IDMs; held-out set):

    python benchmarks/headroom.py --workdir=/tmp/wc_repro [--candidates=12] [--trajectories=64] [--eval_seed=0]
        [--base_seed=0] [--corrupt=p] [--per_reward]

`--corrupt=p` measures setting (b)'s gate: the candidates come from the base further trained on
corrupted labels and poses (`reproduce.stage_corrupted`, cached like the study's), where RL starts.
`--per_reward` also scores the same G candidates (same noises) with each reward on its own and with
similarities to the world's real continuation (RWML's reward, binarised or not, and PSNR), and prints
each one's within-group correlation and best-of-G: which reward can see what the judge sees.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

import reproduce as RP  # noqa: E402
from wc_jax.world import stats as S  # noqa: E402


def per_reward_scores(cfg, wd: pathlib.Path, base: dict, idms, clips, renders, eval_seed: int, log=print) -> dict:
  """{name: [G, N]} for the G candidates of `reproduce.stage_best_of` (same noises), plus "exact"
  (render judge, %). Scored on the RL window (the last chunk of the RL horizon) like the trainer's
  stages: idm (clamped log-likelihood), drift, RWML's cosine in both embeddings (raw and binarised at
  rewards.rwml.threshold) and the PSNR to the real frames. Cached in the workdir's evals/."""
  import jax
  import jax.numpy as jnp
  from wc_jax.rewards.idm import idm_reward
  from wc_jax.world import data as D
  from wc_jax.world import evaluate as E
  from wc_jax.world import judge as J
  from wc_jax.world import reward as R
  g = int(cfg.study.best_of)
  h = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  chunk = int(cfg.model.chunk_latents)
  n = len(clips.actions)
  f = wd / "evals" / f"{base['name']}_perreward{g}_e{eval_seed}_n{n}_h{h}.npz"
  digest = RP.model_digest(base["model"])
  cached = RP.cached_arrays(f, digest, log)
  if cached is not None:
    return cached
  sub = D.Clips(clips.frames[:, :h], clips.actions[:, :h], clips.w2c[:, :h], clips.Ks[:, :h], clips.scenes)
  apply, params = RP.params_of(cfg, base["model"])
  acts = jnp.asarray(sub.actions, jnp.int32)
  real = np.asarray(sub.frames[:, h - chunk:], np.float32)
  encoders = {k: R.make_encoder(k, int(cfg.rewards.rwml.seed)) for k in R.RWML_ENCODERS}
  out: dict = {}
  for i in range(g):
    frames = E.rollout(apply, params, cfg, base["latent"], sub, RP.best_of_seed(eval_seed, i))
    fr = jnp.asarray(frames)
    row = {"idm": jax.vmap(lambda x, a: idm_reward(x, a, idms["reward"]))(fr, acts),
           "drift": jax.vmap(R.drift_reward)(fr, fr[:, 0]),
           "psnr_real": J.psnr(frames[:, h - chunk:], real).mean(1),
           "exact": 100.0 * E.step_metrics(frames, sub, renders)["exact"][:, :h - 1].mean(1)}
    for k, enc in encoders.items():
      row[f"rwml_{k}"] = np.array([float(R.clip_similarities(enc, fr[j:j + 1, h - chunk:], jnp.asarray(real[j]))[0])
                                   for j in range(n)])
    for k, v in row.items():
      out.setdefault(k, []).append(np.asarray(v, np.float64))
  out = {k: np.stack(v) for k, v in out.items()}                              # [G, N]
  th = float(cfg.rewards.rwml.threshold)
  for k in R.RWML_ENCODERS:
    out[f"rwml_{k}_binarised"] = (out[f"rwml_{k}"] >= th).astype(np.float64)
  f.parent.mkdir(exist_ok=True)
  np.savez(f, **out, model_digest=np.str_(digest))
  return out


def per_reward_table(scores: dict) -> str:
  """Markdown: each reward's within-group correlation with the judge and its best-of-G."""
  exact = scores["exact"]
  rows = ["| reward (RL window) | within-group corr | best-of-G by it (%) | mean (%) | oracle (%) |", "|---|---|---|---|---|"]
  for k, v in scores.items():
    if k == "exact":
      continue
    hr = S.headroom(v, exact)   # ties (a binarised reward) go to the first candidate: a random one
    rows.append(f"| {k} | {hr['within_corr']:.2f} | {hr['best_by_reward']:.1f} | {hr['mean']:.1f} | {hr['oracle']:.1f} |")
  return "\n".join(rows)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.py") + ":lowpass",
                  help="path[:variant]; the default variant has a committed base (benchmarks/assets)")
  ap.add_argument("--workdir", default="/tmp/wc_repro")
  ap.add_argument("--base_seed", type=int, default=0)
  ap.add_argument("--candidates", type=int, default=0, help="G (default: study.best_of)")
  ap.add_argument("--trajectories", type=int, default=0, help="held-out trajectories (default: eval.trajectories)")
  ap.add_argument("--eval_seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--per_reward", action="store_true", help="also score the candidates with each reward on its own")
  ap.add_argument("--corrupt", type=float, default=0.0,
                  help="setting (b): the candidates of the base further trained with this fraction of corrupted chunks")
  args = ap.parse_args(argv)
  RP.check_corrupt(args.corrupt, "headroom")
  cfg = RP.load_config(args.config)
  if args.quick:
    cfg = RP.quick(cfg)
  if args.candidates:
    if args.candidates < 2:
      raise SystemExit(f"headroom: --candidates must be >= 2, got {args.candidates}")
    cfg.study.best_of = args.candidates
  wd = pathlib.Path(args.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  log = print
  base = RP.stage_base(cfg, wd, args.base_seed, log)
  if args.corrupt:
    base = RP.stage_corrupted(cfg, wd, base, args.base_seed, args.corrupt, log)
  idms = RP.stage_idms(cfg, wd, log)
  h = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  n = int(args.trajectories or cfg.eval.trajectories)
  clips, renders = RP.stage_eval_set(cfg, wd, args.eval_seed, n, h, log)
  bo = RP.stage_best_of(cfg, wd, base, args.base_seed, idms, clips, renders, args.eval_seed, log)
  hr = S.headroom(bo["score"], bo["exact"])
  g = cfg.study.best_of
  print(f"\n| render-judge exact action accuracy (%) of {base['name']}, {n} held-out trajectories x {h} latents | |")
  print("|---|---|")
  for k, label in (("mean", "mean candidate"), ("best_by_reward", f"best of {g} by reward"),
                   ("worst_by_reward", f"worst of {g} by reward"), ("oracle", f"best of {g} by the judge (oracle)")):
    print(f"| {label} | {hr[k]:.1f} |")
  print(f"\nwithin-group correlation(reward, judge accuracy) {hr['within_corr']:.2f} (pooled {hr['pooled_corr']:.2f}); "
        f"gate (best-of-{g} >= +25, within >= 0.5): "
        f"{'met' if hr['best_by_reward'] - hr['mean'] >= 25 and hr['within_corr'] >= 0.5 else 'not met'}")
  if args.per_reward:
    hr["per_reward"] = per_reward_scores(cfg, wd, base, idms, clips, renders, args.eval_seed, log)
    print("\n" + per_reward_table(hr["per_reward"]))
  print(f"command: python benchmarks/headroom.py --workdir={args.workdir} --candidates={g} --trajectories={n} "
        f"--eval_seed={args.eval_seed} --base_seed={args.base_seed}" + (f" --corrupt={args.corrupt:g}" if args.corrupt else "")
        + (" --quick" if args.quick else "") + (" --per_reward" if args.per_reward else ""))
  return hr


if __name__ == "__main__":
  main()
