"""Reports of evaluation results: Markdown tables, JSON, and a quality-vs-size (and speed) plot."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ternary_hf.fileio import atomic_output_file, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from ternary_hf.evaluation.suite import Comparison, ModelReport


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mib(size: dict | None) -> str:
    return f"{size['bytes'] / 2**20:.1f} MiB" if size and "bytes" in size else "-"


def report_markdown(report: "ModelReport") -> str:
    """Markdown table of one model's metrics."""
    lines = [f"### {report.label}", "", "| task | metric | value |", "|---|---|---:|"]
    for result in report.results:
        for name, value in result.metrics.items():
            mark = "" if name in result.headline else " (extra)"
            lines.append(f"| {result.task} | {name}{mark} | {_fmt(value)} |")
    lines.append("")
    lines.append(f"Weights: {_mib(report.size)}" + (f"; speed {report.speed:.1f} texts/s" if report.speed else ""))
    return "\n".join(lines)


def comparison_markdown(cmp: "Comparison") -> str:
    """Markdown: per-metric table (baseline, model, retained %), mean retained, fidelity, size, speed."""
    b, m = cmp.baseline, cmp.model
    lines = [
        f"| task | metric | {b.label} | {m.label} | retained |",
        "|---|---|---:|---:|---:|",
    ]
    for row in cmp.rows:
        lines.append(
            f"| {row['task']} | {row['metric']} | {_fmt(row['baseline'])} | {_fmt(row['model'])} | "
            f"{_fmt(row['retained'], 1)}% |"
        )
    lines.append(f"| **mean retained** | | | | **{_fmt(cmp.mean_retained, 1)}%** |")
    if m.fidelity:
        lines += ["", f"Teacher fidelity of {m.label} to {b.label}:", "", "| measure | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in m.fidelity.items()]
    lines += ["", "| model | weights | ratio to fp32 | texts/s |", "|---|---:|---:|---:|"]
    for rep in (b, m):
        ratio = _fmt(rep.size.get("ratio"), 3) if rep.size else "-"
        lines.append(f"| {rep.label} | {_mib(rep.size)} | {ratio} | {_fmt(rep.speed, 1)} |")
    return "\n".join(lines)


def plot_quality_vs_size(
    reports: Sequence["ModelReport"],
    path: str | os.PathLike,
    reference: "ModelReport | None" = None,
) -> str:
    """PNG of quality (mean retained % of ``reference``'s headline metrics, or the mean headline
    metric without a reference) against weight size, and against speed when every report has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def quality(rep: "ModelReport") -> float:
        if reference is None:
            values = [v for _, _, v in rep.headline()]
        else:
            values = [100.0 * rep.metric(t, name) / v for t, name, v in reference.headline() if v]
        return sum(values) / len(values)

    have_speed = all(r.speed for r in reports)
    fig, axes = plt.subplots(1, 2 if have_speed else 1, figsize=(10 if have_speed else 5.5, 4), squeeze=False)
    ylabel = f"quality (% of {reference.label})" if reference else "mean headline metric"
    panels = [("weights (MiB)", lambda r: r.size["bytes"] / 2**20 if r.size else float("nan"))]
    if have_speed:
        panels.append(("encoding speed (texts/s)", lambda r: r.speed))
    for ax, (xlabel, getter) in zip(axes[0], panels):
        for rep in reports:
            x, y = getter(rep), quality(rep)
            ax.scatter([x], [y], s=60)
            ax.annotate(rep.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("ternary-hf evaluation")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=120)
    return str(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib figure to `path` atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def json_default(obj: Any) -> Any:
    """`json.dumps` default for numpy / torch scalars and sets."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_comparison(cmp: "Comparison", out_dir: str | os.PathLike, plot: bool = True) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and (with ``plot``) ``quality_vs_size.png``."""
    out = Path(out_dir)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    atomic_write_json(paths["json"], cmp.to_dict(), default=json_default)
    atomic_write_text(paths["markdown"], cmp.to_markdown() + "\n")
    if plot:
        paths["plot"] = plot_quality_vs_size([cmp.baseline, cmp.model], out / "quality_vs_size.png", cmp.baseline)
    return paths


def save_report(report: "ModelReport", out_dir: str | os.PathLike, plot: bool = True) -> dict[str, str]:
    """Single-model variant of :func:`save_comparison`."""
    out = Path(out_dir)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    atomic_write_json(paths["json"], report.to_dict(), default=json_default)
    atomic_write_text(paths["markdown"], report_markdown(report) + "\n")
    if plot:
        paths["plot"] = plot_quality_vs_size([report], out / "quality_vs_size.png")
    return paths
