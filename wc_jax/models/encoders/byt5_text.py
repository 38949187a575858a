"""WorldPlay's glyph-text rule and ByT5's byte tokeniser, in plain Python/NumPy.

The reference (HY-WorldPlay pipeline `_extract_glyph_texts` / `_process_single_byt5_prompt`):
* glyph texts are the contents of straight double quotes "..." or curly quotes “...”
  (non-greedy, in order); with more than one, duplicates are dropped keeping the first;
  empty quotes give an empty text that is kept; single quotes are ignored;
* they are formatted (styles all None) as the concatenation of `Text "{t}". `;
* ByT5 ids are utf-8 bytes + 3, then `</s>` = 1, right-padded with 0 to `max_length`;
  a longer text is cut to `max_length - 1` bytes before the `</s>` (HF truncation);
* a prompt without glyph text is not encoded at all: its states and mask are zeros.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

GLYPH_PATTERN = re.compile(r"\"(.*?)\"|“(.*?)”")
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BYTE_OFFSET = 3
MAX_LENGTH = 256
# literal special-token strings the HF ByT5 tokenizer maps to one id each
BASE_SPECIAL_TOKENS = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}


def extract_glyph_texts(prompt: str) -> list[str]:
  """The quoted texts of `prompt` (the reference's regex and de-duplication)."""
  if not isinstance(prompt, str):
    raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
  found = [a or b for a, b in GLYPH_PATTERN.findall(prompt)]
  return list(dict.fromkeys(found)) if len(found) > 1 else found


def format_glyph_texts(texts: Sequence[str]) -> str:
  """`Text "t". ` per text (no colour/font styles, as WorldPlay calls it)."""
  return "".join(f'Text "{t}". ' for t in texts)


def byt5_tokenize(text: str, max_length: int = MAX_LENGTH,
                  special_tokens: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(ids int64 [max_length], mask int64 [max_length]) of one text, as HF's ByT5 tokenizer
  with padding="max_length", truncation=True, add_special_tokens=True.

  `special_tokens` adds literal strings that map to one id each (the Glyph-SDXL-v2
  `<color-i>` / `<xx-font-j>` tokens of a real checkpoint's tokenizer); `<pad>`, `</s>`,
  `<unk>` are always special.
  """
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1 (room for </s>), got {max_length}")
  specials = dict(BASE_SPECIAL_TOKENS)
  specials.update(special_tokens or {})
  ids: list[int] = []
  if specials:
    split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
    parts = split.split(text)
  else:
    parts = [text]
  for i, part in enumerate(parts):
    if i % 2 == 1:
      ids.append(int(specials[part]))
    else:
      ids.extend(b + BYTE_OFFSET for b in part.encode("utf-8"))
  ids = ids[:max_length - 1] + [EOS_ID]
  out = np.full((max_length,), PAD_ID, np.int64)
  out[:len(ids)] = ids
  mask = np.zeros((max_length,), np.int64)
  mask[:len(ids)] = 1
  return out, mask


def glyph_tokens(prompts: Sequence[str], max_length: int = MAX_LENGTH,
                 special_tokens: Mapping[str, int] | None = None):
  """Per prompt: (ids [B, L], mask [B, L], has_glyph [B] bool, formatted texts).

  Prompts without glyph text get the tokens of "" (just `</s>`) and has_glyph False;
  the encoder's output for them is replaced by zeros."""
  if isinstance(prompts, str):
    prompts = [prompts]
  ids, masks, has, texts = [], [], [], []
  for p in prompts:
    glyphs = extract_glyph_texts(p)
    text = format_glyph_texts(glyphs)
    i, m = byt5_tokenize(text, max_length, special_tokens)
    ids.append(i)
    masks.append(m)
    has.append(len(glyphs) > 0)
    texts.append(text)
  return np.stack(ids), np.stack(masks), np.asarray(has, bool), texts
