"""Write `model_cards/example_all-MiniLM-L6-v2-ternary.md`, an example of the model card ternary-hf writes.

The card template itself is package data: `ternary_hf/templates/ternary_model_card.md` (the one source
of truth; `ternary-hf push`, `ternary-hf quantize`, `ternary-hf quickstart` and
`ternary_hf.render_model_card` render it). The example here is that template rendered for the bundled
all-MiniLM-L6-v2 after post-training ternarization. Regenerate it after changing the template:

    HF_HUB_OFFLINE=1 python model_cards/make_example.py            # rewrite the example
    HF_HUB_OFFLINE=1 python model_cards/make_example.py --check    # exit 1 if it is out of date

`tests/test_model_card_example.py` runs the check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "example_all-MiniLM-L6-v2-ternary.md"
REPO_ID = "your-name/all-MiniLM-L6-v2-ternary"


def render_example() -> str:
    """The card of the bundled all-MiniLM-L6-v2, ternarized on load and saved packed."""
    from sentence_transformers import SentenceTransformer

    import ternary_hf
    from ternary_hf.defaults import default_model_path
    from ternary_hf.hub import CardInfo

    model = SentenceTransformer(default_model_path(), device="cpu",
                                model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        return ternary_hf.render_model_card(tmp, REPO_ID, CardInfo(
            base_model="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0"))


def main() -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the example model card.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the example is out of date")
    args = parser.parse_args()
    text = render_example()
    if args.check:
        current = EXAMPLE.read_text(encoding="utf-8") if EXAMPLE.exists() else ""
        if current != text:
            print(f"{EXAMPLE} is out of date: run python model_cards/make_example.py", file=sys.stderr)
            return 1
        return 0
    from ternary_hf.fileio import atomic_write_text

    atomic_write_text(EXAMPLE, text)
    print(f"wrote {EXAMPLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
