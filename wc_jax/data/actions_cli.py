"""Pose strings on the command line: labels, poses, and optionally a synthetic-world clip.

    python -m wc_jax.data.actions_cli "w-8, right-4, d-8"
    python -m wc_jax.data.actions_cli "w+right-16" --out /tmp/traj.npz --gif /tmp/traj.gif

Syntax (as the reference CLI, plus '+' for compound moves): comma-separated
`key-latents`; w/s/a/d translate forward/backward/left/right, left/right yaw,
up/down pitch. The trajectory starts at the identity camera and each command
latent adds one latent (0.08 and 3 degrees per latent unless --step/--angle).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from wc_jax.data import trajectories


def main(argv=None) -> trajectories.Trajectory:
  p = argparse.ArgumentParser(prog="python -m wc_jax.data.actions_cli", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("pose", help='pose string, e.g. "w-8, right-4, d-8"')
  p.add_argument("--step", type=float, default=trajectories.CLI_STEP)
  p.add_argument("--angle", type=float, default=trajectories.CLI_ANGLE_DEG, help="degrees")
  p.add_argument("--out", default=None,
                 help="write c2w, w2c, frame_c2w, actions, intrinsics (.npz)")
  p.add_argument("--gif", default=None, help="render the synthetic world along it (.gif)")
  p.add_argument("--scene", type=int, default=0, help="synthetic scene seed for --gif")
  p.add_argument("--size", type=int, nargs=2, default=(64, 96), metavar=("H", "W"))
  a = p.parse_args(argv)
  try:
    tr = trajectories.trajectory_from_string(a.pose, step=a.step, angle_deg=a.angle)
  except ValueError as e:
    p.error(str(e))
  print(f"{tr.num_latents} latents, {tr.num_frames} frames")
  for i, (label, name) in enumerate(zip(tr.actions, tr.describe())):
    print(f"  latent {i:3d}: {label:2d}  {name}")
  if a.out:
    np.savez(a.out, c2w=tr.c2w, w2c=tr.w2c, frame_c2w=tr.frame_c2w, actions=tr.actions,
             intrinsics=tr.intrinsics, motions=tr.motions)
    print(f"wrote {a.out}")
  if a.gif:
    from PIL import Image
    from wc_jax.data import synthetic_world
    clip = synthetic_world.render_trajectory(synthetic_world.make_scene(a.scene), tr, *a.size)
    frames = [Image.fromarray(f) for f in clip.frames_uint8()]
    frames[0].save(a.gif, save_all=True, append_images=frames[1:], duration=1000 // 24, loop=0)
    print(f"wrote {a.gif}")
  return tr


if __name__ == "__main__":
  main(sys.argv[1:])
