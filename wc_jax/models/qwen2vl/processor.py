"""Qwen2-VL image processing and HPSv3's chat layout, in NumPy / JAX (no PIL, no tokenizer needed).

Images (what `hpsv3.dataset.utils.fetch_image` + `Qwen2VLImageProcessor` do):
  1. `smart_resize`: (H, W) -> multiples of 28 near the pixel budget (HPSv3 uses
     min = max = 256*28*28 = 200704 px);
  2. resize with Pillow's BICUBIC on uint8 RGB, reproduced exactly: Pillow's fixed-point
     two-pass resampler (horizontal pass, then vertical, each rounded and clipped to uint8;
     a pass is skipped when that side keeps its size). `resize_uint8` runs it as two
     integer matmuls, so it is exact and jittable;
  3. x/255, CLIP mean/std normalisation (float32);
  4. patches: the image tiled to T=2 frames, cut into 14x14 patches ordered merge-window
     major; each row is (C, T, 14, 14) flattened (1176 values).

Text: the reference's one-turn chat with the image, `INSTRUCTION.format(prompt)` and the
`<|Reward|>` suffix. `chat_ids` assembles the token ids from a `tokenize(str) -> ids`
callable for plain text (special tokens are never passed to it, as a Hugging Face
tokenizer splits on them); `QUALITY_PROMPT` needs no tokenizer (its ids are built in).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 14
TEMPORAL_PATCH = 2
MERGE = 2
FACTOR = PATCH * MERGE               # 28
MAX_RATIO = 200
HPSV3_PIXELS = 256 * 28 * 28         # HPSv3 prepare_batch: min_pixels = max_pixels = 200704
PROCESSOR_MIN_PIXELS = 3136          # Qwen2-VL-7B-Instruct preprocessor_config.json
PROCESSOR_MAX_PIXELS = 12845056

# Qwen2-VL special tokens (+ HPSv3's added <|Reward|>).
PAD_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655
REWARD_ID = 151657
SPECIAL_TOKENS = {"<|endoftext|>": PAD_ID, "<|im_start|>": IM_START_ID, "<|im_end|>": IM_END_ID,
                  "<|vision_start|>": VISION_START_ID, "<|vision_end|>": VISION_END_ID,
                  "<|image_pad|>": IMAGE_PAD_ID, "<|Reward|>": REWARD_ID}

QUALITY_PROMPT = "A high-quality, ultra-detailed and well-structured image."

# hpsv3/dataset/data_collator_qwen.py INSTRUCTION (the user text after the image).
INSTRUCTION = (
    '\n'
    'You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. \n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n'
    '- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.\n'
    '- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. \n'
    '\n'
    '**Text Alignment:**  \n'
    'Assess how well the image matches the textual prompt across the following sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.\n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.\n'
    '- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.\n'
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.\n'
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.\n'
    'Textual prompt - {text_prompt}\n'
    '\n'
    '\n'
    ''
)
REWARD_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"

# Qwen2-VL tokenizer ids of the chat around the image pads for QUALITY_PROMPT:
# [system turn, "<|im_start|>user\n", <|vision_start|>] and [<|vision_end|>, text, <|Reward|>, tail].
QUALITY_IDS_BEFORE = (151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652)
QUALITY_IDS_AFTER = (
    151653, 198, 2610, 525, 50820, 448, 37563, 264, 7907, 2168, 3118, 389, 20185, 17927, 323, 2918, 32265, 323,
    2968, 264, 8084, 5456, 311, 16045, 279, 3738, 21933, 13, 5209, 3410, 264, 10728, 504, 220, 15, 311, 220, 16, 15,
    11, 448, 220, 15, 1660, 279, 11785, 323, 220, 16, 15, 1660, 279, 1850, 13, 4710, 334, 9594, 17927, 66963, 2303,
    82345, 279, 8084, 9124, 4271, 315, 279, 2168, 13, 576, 2701, 1186, 1737, 318, 4664, 1265, 387, 6509, 510, 12,
    3070, 25139, 370, 76219, 66963, 576, 2168, 1265, 537, 6644, 894, 5089, 23275, 476, 19819, 5975, 11, 1741, 438,
    34563, 2487, 14389, 476, 31695, 724, 938, 12158, 83723, 624, 12, 3070, 5066, 10748, 66963, 54115, 279, 17232,
    2090, 323, 23160, 315, 279, 2168, 13, 576, 2168, 1265, 387, 2797, 323, 4135, 311, 14198, 11, 448, 902, 1501,
    20449, 476, 1257, 380, 7800, 5671, 624, 12, 3070, 10649, 8107, 2090, 66963, 21144, 279, 2188, 315, 7716, 304,
    29853, 11, 7236, 11, 17716, 11, 323, 1008, 9124, 5424, 320, 68, 1302, 2572, 6869, 11, 17438, 11, 34512, 4292,
    12, 3070, 32, 70009, 323, 17667, 1927, 66963, 81835, 279, 31592, 13566, 315, 279, 2168, 11, 2670, 279, 1894,
    12859, 11, 18037, 11, 16566, 11, 7990, 315, 2070, 11, 323, 279, 8084, 11521, 14303, 13, 576, 6109, 1265, 20001,
    264, 5530, 315, 25281, 323, 8172, 624, 12, 3070, 73037, 66963, 576, 2168, 1265, 537, 6644, 27756, 476, 32681,
    2213, 11, 1741, 438, 4948, 11, 16401, 11, 476, 6683, 3684, 13, 1416, 1741, 2213, 374, 3042, 11, 279, 2168, 4271,
    323, 23689, 5456, 1265, 387, 279, 15457, 3204, 13, 4710, 334, 1178, 32265, 66963, 2303, 5615, 433, 1246, 1632,
    279, 2168, 9071, 279, 62533, 9934, 3941, 279, 2701, 1186, 1737, 318, 4664, 510, 12, 3070, 13019, 1032, 32094,
    334, 54115, 1246, 29257, 279, 3832, 1141, 8, 304, 279, 2168, 320, 68, 1302, 2572, 1697, 11, 9864, 11, 1633, 8,
    5285, 448, 279, 62533, 4008, 13, 576, 3832, 1265, 2432, 279, 4008, 304, 3793, 315, 1372, 11, 11094, 11, 323,
    7709, 624, 12, 3070, 2323, 1032, 32094, 66963, 1416, 279, 9934, 29102, 264, 3953, 31592, 476, 66373, 292, 1707,
    11, 15442, 1246, 1632, 279, 2168, 34951, 288, 311, 419, 1707, 624, 12, 3070, 1972, 928, 7292, 47094, 95518,
    81835, 3425, 279, 4004, 11, 6243, 11, 323, 14590, 5424, 304, 279, 2168, 73045, 4946, 279, 15048, 7481, 304, 279,
    9934, 13, 576, 4573, 1265, 1824, 323, 18379, 279, 3832, 2041, 80423, 624, 12, 3070, 3907, 434, 45101, 95518,
    4248, 421, 3151, 8201, 9733, 304, 279, 9934, 320, 68, 1302, 2572, 7987, 11, 17438, 11, 22293, 11, 23393, 11,
    6168, 8, 525, 93076, 15251, 304, 279, 2168, 13, 29793, 85265, 1231, 387, 21555, 11, 714, 9023, 8201, 1265, 387,
    33583, 624, 12, 3070, 97931, 3539, 51361, 95518, 54115, 3425, 279, 8084, 7290, 323, 7385, 315, 279, 9934, 525,
    17006, 304, 279, 2168, 13, 576, 7907, 2213, 1265, 537, 19131, 5424, 429, 12055, 448, 476, 69484, 279, 4024,
    4008, 624, 1178, 928, 9934, 481, 362, 1550, 22092, 11, 23998, 1737, 10111, 323, 1632, 12, 51143, 2168, 2012,
    5501, 3410, 279, 8084, 18102, 315, 419, 2168, 25, 220, 151657, 271, 4689, 198, 151645, 198, 151644, 77091, 198
)


# ----------------------------------------------------------------------------- sizes

def _round_half_even(x: float) -> int:
  return int(round(x))


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = HPSV3_PIXELS,
                 max_pixels: int = HPSV3_PIXELS) -> tuple[int, int]:
  """Qwen2-VL's target size: both sides multiples of `factor`, area within [min, max] pixels."""
  if height <= 0 or width <= 0:
    raise ValueError(f"image must be non-empty, got height={height} width={width}")
  if max(height, width) / min(height, width) > MAX_RATIO:
    raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                     f"{max(height, width) / min(height, width)}")
  h_bar = max(factor, _round_half_even(height / factor) * factor)
  w_bar = max(factor, _round_half_even(width / factor) * factor)
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = math.floor(height / beta / factor) * factor
    w_bar = math.floor(width / beta / factor) * factor
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


# ----------------------------------------------------------------------------- Pillow bicubic

_PRECISION_BITS = 32 - 8 - 2


def _bicubic(x: np.ndarray) -> np.ndarray:
  a = -0.5
  x = np.abs(x)
  return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                  np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Pillow's 8-bit fixed-point BICUBIC coefficients as an int32 [out, in] matrix."""
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  m = np.zeros((out_size, in_size), np.int64)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    w = _bicubic((np.arange(xmin, xmax) - center + 0.5) / filterscale)
    total = w.sum()
    if total != 0.0:
      w = w / total
    fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)), np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
    m[xx, xmin:xmax] = fixed.astype(np.int64)
  return m.astype(np.int32)


def _clip8(acc):
  return jnp.clip(jnp.right_shift(acc + (1 << (_PRECISION_BITS - 1)), _PRECISION_BITS), 0, 255)


def resize_uint8(images, height: int, width: int):
  """[N,H,W,3] uint8 -> [N,height,width,3] uint8, bit-exact with Pillow `resize(BICUBIC)` on RGB."""
  images = jnp.asarray(images)
  _, h, w, _ = images.shape
  x = images.astype(jnp.int32)
  if w != width:
    mw = jnp.asarray(pil_bicubic_matrix(w, width))
    x = _clip8(jnp.einsum("ow,nhwc->nhoc", mw, x, preferred_element_type=jnp.int32))
  if h != height:
    mh = jnp.asarray(pil_bicubic_matrix(h, height))
    x = _clip8(jnp.einsum("oh,nhwc->nowc", mh, x, preferred_element_type=jnp.int32))
  return x.astype(jnp.uint8)


# ----------------------------------------------------------------------------- pixels -> patches

def normalize(images_uint8):
  """uint8 [..., 3] -> (x/255 - mean)/std, float32 (the processor's rescale + normalize)."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / jnp.float32(255.0)
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def to_patches(pixels):
  """Normalised [N,H,W,3] (H, W multiples of 28) -> (pixel_values [N*P, 1176], grid_thw [N,3] numpy)."""
  n, h, w, c = pixels.shape
  if h % FACTOR or w % FACTOR:
    raise ValueError(f"image size {(h, w)} must be multiples of {FACTOR}")
  gh, gw = h // PATCH, w // PATCH
  x = jnp.transpose(pixels, (0, 3, 1, 2))                                  # [N,C,H,W]
  x = jnp.broadcast_to(x[:, None], (n, TEMPORAL_PATCH, c, h, w))           # single image tiled to T=2
  x = x.reshape(n, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
  x = jnp.transpose(x, (0, 3, 6, 4, 7, 2, 1, 5, 8))
  x = x.reshape(n * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH)
  grid = np.tile(np.asarray([[1, gh, gw]], np.int64), (n, 1))
  return x, grid


def to_uint8(frames):
  """Frames in [0,1] float (the repo's convention) or uint8 -> uint8 (round to nearest, clipped)."""
  frames = jnp.asarray(frames)
  if frames.dtype == jnp.uint8:
    return frames
  return jnp.clip(jnp.round(frames.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)


def preprocess(images_uint8, min_pixels: int = HPSV3_PIXELS, max_pixels: int = HPSV3_PIXELS, *,
               processor_min_pixels: int = PROCESSOR_MIN_PIXELS, processor_max_pixels: int = PROCESSOR_MAX_PIXELS):
  """Same-size uint8 images [N,H,W,3] -> (pixel_values, grid_thw, fetch_image-resized uint8 images).

  Two resizes as in the reference: `fetch_image` to the message's pixel budget, then the
  image processor's own smart_resize (its budget 3136..12845056 px; a no-op unless the
  message budget is below 3136 px).
  """
  _, h, w, _ = images_uint8.shape
  rh, rw = smart_resize(h, w, FACTOR, min_pixels, max_pixels)
  resized = resize_uint8(images_uint8, rh, rw)          # fetch_image's output (what the 3rd value is)
  ph, pw = smart_resize(rh, rw, FACTOR, processor_min_pixels, processor_max_pixels)
  final = resize_uint8(resized, ph, pw) if (ph, pw) != (rh, rw) else resized
  pv, grid = to_patches(normalize(final))
  return pv, grid, resized


# ----------------------------------------------------------------------------- chat layout

def render_text(prompt: str) -> str:
  """The chat string the reference tokenizes (`<|image_pad|>` once; the processor expands it)."""
  return (SYSTEM_TURN + "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
          + INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")


def _split_special(text: str) -> list[str | int]:
  """Text pieces and special-token ids, in order."""
  out: list[str | int] = []
  i = 0
  while i < len(text):
    nxt = min(((text.find(s, i), s) for s in SPECIAL_TOKENS if text.find(s, i) >= 0), default=None)
    if nxt is None:
      out.append(text[i:])
      break
    j, s = nxt
    if j > i:
      out.append(text[i:j])
    out.append(SPECIAL_TOKENS[s])
    i = j + len(s)
  return out


def chat_ids(prompt: str, num_image_tokens: int, tokenize: Callable[[str], Sequence[int]] | None = None) -> list[int]:
  """Token ids of one scoring input (image pads expanded).

  tokenize: plain text -> Qwen2 BPE ids (e.g. `wc_jax.rewards.hpsv3.load_tokenizer(folder)`);
  optional for `QUALITY_PROMPT`, whose ids are built in.
  """
  if not isinstance(prompt, str):
    raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
  if num_image_tokens <= 0:
    raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
  if tokenize is None:
    if prompt != QUALITY_PROMPT:
      raise ValueError("HPSv3: a prompt other than QUALITY_PROMPT needs a tokenizer (pass tokenize=, e.g. "
                       "wc_jax.rewards.hpsv3.load_tokenizer(<Qwen2-VL checkpoint folder>))")
    return list(QUALITY_IDS_BEFORE) + [IMAGE_PAD_ID] * num_image_tokens + list(QUALITY_IDS_AFTER)
  ids: list[int] = []
  for piece in _split_special(render_text(prompt)):
    if isinstance(piece, int):
      ids.extend([IMAGE_PAD_ID] * num_image_tokens if piece == IMAGE_PAD_ID else [piece])
    else:
      ids.extend(int(t) for t in tokenize(piece))
  return ids


def batch_ids(rows: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded [B, L] int32 ids and attention mask (the processor's padding=True, side right)."""
  if not rows:
    raise ValueError("batch_ids: no rows")
  length = max(len(r) for r in rows)
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def image_token_count(grid_thw) -> np.ndarray:
  """<|image_pad|> tokens per image: t*h*w / merge^2."""
  g = np.asarray(grid_thw)
  return g[:, 0] * g[:, 1] * g[:, 2] // (MERGE * MERGE)


__all__ = ["smart_resize", "resize_uint8", "normalize", "to_patches", "preprocess", "chat_ids", "batch_ids",
           "render_text", "pil_bicubic_matrix", "image_token_count", "to_uint8"]
