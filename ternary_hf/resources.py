"""Files the package reads at run time, shipped inside it as package data (see `pyproject.toml`).

Everything the installed package opens at run time lives under `ternary_hf/` and is listed in
`[tool.setuptools.package-data]`, so a wheel works with no source tree around; `.ci/wheel_smoke.sh`
checks that from a clean virtualenv.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODEL_CARD_TEMPLATE = "ternary_model_card.md"


def package_file(*parts: str) -> Path:
    """Path of a data file inside the installed `ternary_hf` package, e.g. `package_file("templates", name)`.

    Raises FileNotFoundError naming the file when the installation lacks it (a wheel built without
    its package data).
    """
    path = Path(str(resources.files("ternary_hf").joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing from the ternary-hf installation: it is package data and should ship inside "
            "the wheel. Reinstall ternary-hf; if you built it yourself, check [tool.setuptools.package-data] "
            "in pyproject.toml."
        )
    return path


def model_card_template() -> Path:
    """The Jinja template every ternary model card is rendered from (`ternary_hf.hub.build_model_card`)."""
    return package_file("templates", MODEL_CARD_TEMPLATE)
