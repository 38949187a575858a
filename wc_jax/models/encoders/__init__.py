"""Conditioning encoders of WorldPlay / HunyuanVideo-1.5: prompt and first image -> DiT inputs.

* `t5`            ByT5 (T5 encoder) for quoted glyph text, with `byt5_text` (bytes, glyph rule);
* `siglip`        SigLIP vision tower for the reference image, with `image_resize` (PIL-exact
                  bucket resize and processor in NumPy);
* `qwen_text`     the Qwen2.5-VL text path (template, crop_start, hidden state [-3], CFG rows);
* `conditioning`  prompts + first image -> the DiT's conditioning tensors (the entry points).

Models only: weights come from `wc_jax.convert.encoders`.
"""
