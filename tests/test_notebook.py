"""The small-scale notebook: valid nbformat-4 JSON whose code cells parse and run our script."""
import ast
import json
import pathlib

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "wc_jax_small_scale.ipynb"


def test_notebook_cells_parse_and_drive_the_reproduction():
  nb = json.loads(NB.read_text())
  assert nb["nbformat"] == 4
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  for src in code:
    ast.parse(src)                  # a syntax error in any cell fails here, not in Colab
  text = "\n".join(code)
  assert "benchmarks/reproduce.py" in text and "--quick" in text
  assert "WC_JAX_REPO" in text and "OWNER" not in text   # no placeholder URL to clone
  for f in ("results.md", "metrics.jsonl", "compare_"):
    assert f in text, f
