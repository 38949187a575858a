"""The README's main job (generate) and the TPU fit planner on the tiny config."""
import json

import numpy as np
import pytest

from conftest import load_config
from wc_jax import generate


def test_generate_tiny_writes_latents_and_counts_passes(tmp_path):
  cfg = load_config("tiny")
  cfg.sampling.chunks = 3
  cfg.sampling.steps = 2
  summary = generate.run(cfg, str(tmp_path))
  assert summary["finite"]
  # 1 text pass + one context pass per chunk after the first + steps per chunk
  assert summary["model_passes"] == 1 + 2 + 3 * 2
  assert summary["context_indices"] == [[], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7]]
  data = np.load(tmp_path / "latents.npz")
  assert data["latents"].shape == (1, 4, 12, 4, 6)
  assert (tmp_path / "latents.gif").stat().st_size > 0
  assert json.loads((tmp_path / "summary.json").read_text())["latent_frames"] == 12
  # the noise was actually denoised: chunks differ from their initial noise draw
  rng = np.random.default_rng(cfg.seed)
  init = rng.standard_normal(data["latents"].shape).astype(np.float32)
  assert np.abs(data["latents"] - init).mean() > 1e-3


def test_plan_tiny_on_a_tpu_topology():
  pytest.importorskip("libtpu")
  from wc_jax import plan
  cfg = load_config("tiny")
  cfg.sampling.max_context_frames = 4
  out = plan.plan(cfg, "v5p:2x2x1", path="ar")
  assert out["chips"] == 4 and out["mesh"]["fsdp"] == 4
  assert out["per_chip_gib"]["total"] > 0 and out["model_tflop_per_chip"] > 0
  assert out["fits"] is True
  full = plan.plan(cfg, "v5p:2x2x1", path="full")
  assert full["model_tflop_per_chip"] > out["model_tflop_per_chip"]  # 8 frames > 4


def test_plan_rejects_a_mesh_that_does_not_fit_the_topology():
  pytest.importorskip("libtpu")
  from wc_jax import plan
  cfg = load_config("tiny")
  cfg.mesh.fsdp = 3
  with pytest.raises(ValueError, match="needs 3 devices but 4 are available"):
    plan.plan(cfg, "v5p:2x2x1")


def test_plan_covers_the_rl_rollout_and_update():
  pytest.importorskip("libtpu")
  from wc_jax import plan
  cfg = load_config("tiny")
  cfg.sampling.max_context_frames = 4
  roll = plan.plan(cfg, "v5p:2x2x1", path="rollout")
  upd = plan.plan(cfg, "v5p:2x2x1", path="update")
  assert roll["path"] == "rollout" and upd["path"] == "update" and upd["fits"]
  # the update holds params + optimizer moments + two EMAs: more state than the rollout's params
  assert upd["argument_bytes_per_chip"] > 3 * roll["argument_bytes_per_chip"] // 2
  assert upd["model_tflop_per_chip"] >= 0 and roll["model_tflop_per_chip"] >= 0
