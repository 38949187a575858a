"""The TPU fit planner on the tiny config (generate's tests: tests/test_generate.py)."""
import pytest

from conftest import load_config


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
