"""model_cards/ holds an example card generated from the packaged template: it must match what the template renders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MAKE_EXAMPLE = Path(__file__).resolve().parents[1] / "model_cards" / "make_example.py"


def test_example_card_is_rendered_from_the_packaged_template():
    spec = importlib.util.spec_from_file_location("make_example", MAKE_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render_example()
    assert "import ternary_hf" in expected and "| ternary-hf |" in expected
    assert module.EXAMPLE.read_text(encoding="utf-8") == expected, (
        "model_cards/example_all-MiniLM-L6-v2-ternary.md is out of date: run "
        "HF_HUB_OFFLINE=1 python model_cards/make_example.py"
    )
