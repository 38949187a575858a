"""A fixed, exactly invertible pixel <-> latent map that stands in for the VAE.

Why: a randomly initialised tiny VAE is not a useful encoder, and training one
would cost most of the CPU budget. Frames are cut into p x p patches, each patch
(3 p^2 values) is rotated by an orthonormal 2-D DCT so the low frequencies come
first, and every channel is standardised with fixed statistics. All three steps
are invertible, so decode(encode(x)) == x up to float32 rounding.

One latent frame is one video frame (no temporal compression): the synthetic
world renders one frame per commanded latent pose.

`keep` < patch keeps only the k x k lowest DCT frequencies of each patch (C = 3 k^2): a
lossy latent, like a VAE's, that drops the fine detail a small model renders as noise.
Encoding is then a projection; `lowpass(frames)` is the round trip, the world that latent
sees exactly (decode(encode(lowpass(x))) == lowpass(x)).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


def dct_matrix(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix [n, n] (rows are basis vectors)."""
  k = np.arange(n)[:, None]
  i = np.arange(n)[None]
  m = np.cos(np.pi * (i + 0.5) * k / n) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m


@dataclasses.dataclass(frozen=True)
class PatchLatent:
  """frames [..., F, H, W, 3] in [0, 1] <-> latents [..., C, F, H/p, W/p], C = 3 k^2 (k = keep or p)."""
  patch: int = 4
  mean: tuple = ()     # per-channel statistics (empty: 0 and 1)
  std: tuple = ()
  keep: int = 0        # k x k lowest DCT frequencies per patch and colour (0: all, exactly invertible)

  def __post_init__(self):
    if self.patch < 1:
      raise ValueError(f"PatchLatent: patch must be >= 1, got {self.patch}")
    if not 0 <= self.keep <= self.patch:
      raise ValueError(f"PatchLatent: keep must be in [0, patch={self.patch}], got {self.keep}")
    for name in ("mean", "std"):
      v = getattr(self, name)
      if v and len(v) != self.channels:
        raise ValueError(f"PatchLatent: {name} needs {self.channels} values, got {len(v)}")
    if self.std and min(self.std) <= 0:
      raise ValueError("PatchLatent: std must be positive")

  @property
  def channels(self) -> int:
    k = self.keep or self.patch
    return 3 * k * k

  def _basis(self) -> np.ndarray:
    """[C, 3 p^2] orthonormal rows: a 2-D DCT of each colour plane, channels ordered
    colour-major, only the frequencies (u, v) < keep."""
    p, k = self.patch, self.keep or self.patch
    d = dct_matrix(p)
    full = np.kron(np.eye(3), np.kron(d, d))
    u, v = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    rows = np.tile(((u < k) & (v < k)).reshape(-1), 3)
    return full[rows].astype(np.float32)

  def _stats(self):
    c = self.channels
    mean = np.asarray(self.mean or np.zeros(c), np.float32)
    std = np.asarray(self.std or np.ones(c), np.float32)
    return mean, std

  def _raw(self, frames):
    p = self.patch
    x = jnp.asarray(frames, jnp.float32) * 2.0 - 1.0
    *lead, f, h, w, c = x.shape
    if c != 3 or h % p or w % p:
      raise ValueError(f"PatchLatent.encode: frames must be [..., F, H, W, 3] with H, W multiples of "
                       f"{p}, got shape {tuple(x.shape)}")
    n = len(lead)
    x = x.reshape(*lead, f, h // p, p, w // p, p, 3)
    x = jnp.transpose(x, tuple(range(n + 2)) + (n + 3, n + 5, n + 2, n + 4))   # [..., F, h, w, 3, p, p]
    x = x.reshape(*lead, f, h // p, w // p, 3 * p * p) @ jnp.asarray(self._basis()).T
    return jnp.moveaxis(x, -1, -4)                                 # [..., C, F, h, w]

  def encode(self, frames):
    """frames [..., F, H, W, 3] in [0, 1] -> standardised latents [..., C, F, H/p, W/p]."""
    mean, std = self._stats()
    z = self._raw(frames)
    return (z - mean[:, None, None, None]) / std[:, None, None, None]

  def decode(self, latents, clip: bool = True):
    """latents [..., C, F, h, w] -> frames [..., F, h p, w p, 3] (clipped to [0, 1] by default)."""
    p = self.patch
    z = jnp.asarray(latents, jnp.float32)
    if z.ndim < 4 or z.shape[-4] != self.channels:
      raise ValueError(f"PatchLatent.decode: latents must be [..., {self.channels}, F, h, w], "
                       f"got shape {tuple(z.shape)}")
    mean, std = self._stats()
    z = z * std[:, None, None, None] + mean[:, None, None, None]
    *lead, _, f, h, w = z.shape
    n = len(lead)
    x = jnp.moveaxis(z, -4, -1) @ jnp.asarray(self._basis())       # [..., F, h, w, C]
    x = x.reshape(*lead, f, h, w, 3, p, p)
    x = jnp.transpose(x, tuple(range(n + 2)) + (n + 4, n + 2, n + 5, n + 3))   # [..., F, h, p, w, p, 3]
    x = (x.reshape(*lead, f, h * p, w * p, 3) + 1.0) / 2.0
    return jnp.clip(x, 0.0, 1.0) if clip else x

  def fitted(self, frames, scale: str = "channel") -> "PatchLatent":
    """The same map with statistics of `frames`: per-channel means, and either a std per
    channel ("channel": every DCT frequency at unit scale) or one shared std ("global":
    unit scale on average, frequencies keep their natural energy, so the noise is
    isotropic in pixel space and the loss weights a frequency by how much it shows)."""
    if scale not in ("channel", "global"):
      raise ValueError(f"PatchLatent.fitted: scale must be 'channel' or 'global', got {scale!r}")
    z = np.asarray(PatchLatent(self.patch, keep=self.keep)._raw(frames))
    z = np.moveaxis(z, -4, 0).reshape(self.channels, -1)
    std = np.maximum(z.std(1), 1e-2)
    if scale == "global":
      std = np.full_like(std, np.sqrt(np.mean(z.var(1))))
    return PatchLatent(self.patch, tuple(float(v) for v in z.mean(1)), tuple(float(v) for v in std), self.keep)

  def lowpass(self, frames) -> np.ndarray:
    """frames [..., F, H, W, 3] -> the frames this latent represents exactly (unclipped round
    trip; `frames` themselves when keep is 0)."""
    if not self.keep or self.keep == self.patch:
      return np.asarray(frames, np.float32)
    bare = PatchLatent(self.patch, keep=self.keep)
    return np.asarray(bare.decode(bare._raw(frames), clip=False), np.float32)

  def to_dict(self) -> dict:
    return {"patch": self.patch, "mean": list(self.mean), "std": list(self.std), "keep": self.keep}

  @classmethod
  def from_dict(cls, d: dict) -> "PatchLatent":
    return cls(int(d["patch"]), tuple(d.get("mean", ())), tuple(d.get("std", ())), int(d.get("keep", 0)))
