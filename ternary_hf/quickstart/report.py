"""The quickstart's report: Markdown tables, the printed summary, sample searches and the PNG plots,
all built from the `results.json` payload of :func:`ternary_hf.quickstart.run_quickstart`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

TRAINING_CURVE = "training_curve.png"
QUALITY_PLOT = "quality_vs_size_speed.png"
MODELS = ("fp32", "PTQ", "distilled")


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _clip(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _tables(results: dict) -> str:
    return results["footprint"].get("embedding_dtype", "float")


# --------------------------------------------------------------------------- tables
def quality_table(results: dict) -> str:
    """Every headline metric: fp32, PTQ and distilled, with % of fp32 retained; then teacher fidelity."""
    ptq, dist = results["quality"]["PTQ"], results["quality"]["distilled"]
    lines = ["| task | metric | fp32 | PTQ | PTQ retained | distilled | distilled retained |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for rp, rd in zip(ptq["rows"], dist["rows"]):
        lines.append(f"| {rd['task']} | {rd['metric']} | {_f(rd['baseline'])} | {_f(rp['model'])} | "
                     f"{_f(rp['retained'], 1)}% | {_f(rd['model'])} | {_f(rd['retained'], 1)}% |")
    lines.append(f"| **mean retained** | | | | **{_f(ptq['mean_retained'], 1)}%** | | "
                 f"**{_f(dist['mean_retained'], 1)}%** |")
    fid = results["fidelity"]
    labels = {"cos_short_mean": "mean cosine to fp32, short held-out texts",
              "cos_short_min": "min cosine to fp32, short held-out texts",
              "cos_long_mean": "mean cosine to fp32, long documents",
              "cos_long_min": "min cosine to fp32, long documents"}
    lines += ["", "| teacher fidelity (vs fp32) | PTQ | distilled |", "|---|---:|---:|"]
    for key in fid["distilled"]:
        label = labels.get(key, key.replace("_", " ").replace("top10", "top-10 neighbour"))
        lines.append(f"| {label} | {_f(fid['PTQ'][key])} | {_f(fid['distilled'][key])} |")
    return "\n".join(lines)


def footprint_table(results: dict) -> str:
    """Weights of the three models as stored (`ternary_hf.footprint`)."""
    fp = results["footprint"]
    lines = ["| model | weights | ratio to fp32 |", "|---|---:|---:|"]
    for name in MODELS:
        size = fp.get(name) or {}
        lines.append(f"| {name} | {_mib(size.get('bytes'))} | {_f(size.get('ratio'), 3)} |")
    return "\n".join(lines)


def speed_table(results: dict) -> str:
    """Encoding throughput of the three models, and the ratio to fp32."""
    speed = results["speed_texts_per_s"]
    lines = ["| model | texts/s | x fp32 |", "|---|---:|---:|"]
    lines += [f"| {m} | {_f(speed[m], 1)} | {_f(speed[m] / speed['fp32'], 2)} |" for m in MODELS]
    return "\n".join(lines)


def model_label(results: dict) -> str:
    base = results.get("base_model")
    return f"{base} (bundled copy)" if results.get("bundled") else str(base or results["model"])


def ann_table(ann: dict) -> str:
    k = ann["k"]
    rows = ann["rows"]
    extra = [m for m in ("ndcg@10", "mrr@10", "recall@1") if m in rows[0]]
    agree = next(key for key in rows[0] if key.startswith(f"top{k}_agreement"))
    head = (f"| model | index | documents | build s | index MiB | queries/s | recall@{k} vs own exact | "
            f"top-{k} agreement with fp32 exact | " + " | ".join(extra) + (" |" if extra else ""))
    lines = [head.rstrip(" |") + " |", "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        cells = [r["model"], r["index"], f"{r['documents']:,}", _f(r["build_s"], 2), _mib(r["index_bytes"]),
                 _f(r["queries_per_s"], 0), _f(r[f"recall@{k}_vs_own_exact"]), _f(r[agree])]
        cells += [_f(r[m]) for m in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def samples_text(ann: dict) -> str:
    """Plain-text sample searches: query -> top hits under each model."""
    lines = [f"Sample searches over {ann['corpus']}:"]
    for s in ann["samples"]:
        lines.append(f"\n  query: {_clip(s['query'])}")
        relevant = set(s.get("relevant", ()))
        for label, hits in s["hits"].items():
            for rank, h in enumerate(hits, 1):
                mark = " *" if h["id"] in relevant else ""
                lines.append(f"    {label:>9} #{rank} {h['score']:.3f}{mark}  {_clip(h['text'], 80)}")
    if any(s.get("relevant") for s in ann["samples"]):
        lines.append("\n  (* = the query's own WordNet definition)")
    return "\n".join(lines)


def samples_markdown(ann: dict) -> str:
    lines = []
    for s in ann["samples"]:
        relevant = set(s.get("relevant", ()))
        lines += [f"**{_clip(s['query'], 200)}**", "", "| model | rank | score | hit |", "|---|---:|---:|---|"]
        for label, hits in s["hits"].items():
            for rank, h in enumerate(hits, 1):
                mark = " (relevant)" if h["id"] in relevant else ""
                lines.append(f"| {label} | {rank} | {h['score']:.3f} | {_clip(h['text'], 160).replace('|', '/')}{mark} |")
        lines.append("")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """The table printed at the end of the run."""
    q, fid = results["quality"], results["fidelity"]
    fp, speed = results["footprint"], results["speed_texts_per_s"]
    t = results["training"]
    rows = [
        ("mean quality retained (% of fp32)", "100.0", _f(q["PTQ"]["mean_retained"], 1), _f(q["distilled"]["mean_retained"], 1)),
        ("cosine to fp32, short texts", "1", _f(fid["PTQ"]["cos_short_mean"]), _f(fid["distilled"]["cos_short_mean"])),
        ("cosine to fp32, long documents", "1", _f(fid["PTQ"]["cos_long_mean"]), _f(fid["distilled"]["cos_long_mean"])),
        ("top-10 neighbour agreement", "1", _f(fid["PTQ"].get("top10_agreement")), _f(fid["distilled"].get("top10_agreement"))),
        ("weights (MiB)", *(_f((fp.get(m) or {}).get("bytes", float("nan")) / 2**20, 1) for m in MODELS)),
        ("size (x fp32)", *(_f((fp.get(m) or {}).get("ratio"), 3) for m in MODELS)),
        ("encoding speed (texts/s)", *(_f(speed[m], 1) for m in MODELS)),
    ]
    wn = [r for r in q["distilled"]["rows"] if r["task"] == "wordnet" and r["metric"] == "ndcg@10"]
    if wn:
        ptq_wn = next(r for r in q["PTQ"]["rows"] if r["task"] == "wordnet" and r["metric"] == "ndcg@10")
        rows.insert(1, ("WordNet retrieval nDCG@10", _f(wn[0]["baseline"]), _f(ptq_wn["model"]), _f(wn[0]["model"])))
    width = max(len(r[0]) for r in rows)
    head = f"{'':<{width}}  {'fp32':>9}  {'PTQ':>9}  {'distilled':>9}"
    lines = [f"ternary-hf quickstart: {model_label(results)}",
             f"distilled {t['steps']} steps in {t['minutes']:.1f} min on {t['texts']:,} texts "
             f"({results['corpus']}); total {results['wall_minutes']:.1f} min",
             f"stored as 2-bit linears + {_tables(results)} embedding tables", "", head, "-" * len(head)]
    lines += [f"{name:<{width}}  {a:>9}  {b:>9}  {c:>9}" for name, a, b, c in rows]
    return "\n".join(lines)


def report_markdown(results: dict, comparisons: dict, checkpoint_footprint: Any) -> str:
    """`report.md`: quality, footprint, speed and search tables, plots, how to use the checkpoint."""
    t = results["training"]
    la = results["load_avg"]
    speed = results["speed_texts_per_s"]
    lines = [
        "# ternary-hf quickstart report", "",
        f"Model: `{model_label(results)}`" + (" (smoke run: `--fast`, small evaluation subsets)" if results["fast"] else ""),
        f"Distillation: {t['steps']} steps in {t['minutes']:.1f} min (budget: "
        f"{_f(t['budget_minutes'], 1) + ' min' if t['budget_minutes'] else 'steps'}), batch {t['batch_size']}, "
        f"learning rate {t['learning_rate']:g}, {t['texts']:,} texts ({results['corpus']}).",
        f"Whole run: {results['wall_minutes']:.1f} min; load average (1/5/15 min) at start "
        f"{', '.join(f'{x:.2f}' for x in la['start'])}, at end {', '.join(f'{x:.2f}' for x in la['end'])}.", "",
        "PTQ = ternarized without training; distilled = the packed checkpoint in `model/` after "
        "self-distillation, reloaded from disk. Retained = metric / fp32 metric.", "",
        "## Quality", "", quality_table(results), "",
        "## Footprint", "",
        f"Stored weights of the three models (`ternary_hf.footprint`; PTQ and distilled: 2-bit linears + "
        f"{_tables(results)} embedding tables):", "",
        footprint_table(results), "",
        "The packed checkpoint (`model/`), by component:", "", checkpoint_footprint.to_markdown(), "",
        "## Speed", "",
        f"Encoding {speed['texts']} held-out texts (short WordNet definitions + long Lee documents), batch 32: "
        f"fp32, PTQ and distilled called in turn, {speed['repeats']} rounds after a warm-up, in one process; "
        f"median; {speed['torch_threads']} torch threads (shared machine: see the load average above).", "",
        speed_table(results), "",
        "## FAISS search", "", f"Corpus: {results['ann']['corpus']}.", "", ann_table(results["ann"]), "",
        "### Sample searches", "", samples_markdown(results["ann"]),
        "## Plots", "",
        f"![training curve]({TRAINING_CURVE})", "", f"![quality vs size and speed]({QUALITY_PLOT})", "",
        "## Use the checkpoint", "",
        "```python",
        "import ternary_hf  # registers the ternary quantization method: required before loading",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer(\"model\")  # this report's model/ folder",
        "```", "",
        "Publish it (the model card `model/README.md` is already written): "
        "`ternary-hf push model <your-name>/<repo-name>`.", "",
        "Reproduce: `ternary-hf distill " + " ".join(results["distill_argv"]) + "`.", "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def _save_figure(fig: Any, path: Path) -> None:
    from ..evaluation.report import save_figure

    save_figure(fig, path, dpi=110)


def plot_training_curve(curve: Sequence[dict], path: str | os.PathLike) -> str:
    """PNG: distillation loss (total and per term) against step and against training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curve:
        raise ValueError("no training-curve points (no logged step): nothing to plot")
    path = Path(path)
    terms = sorted({k for p in curve for k in p if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "minutes", "training wall time (min)")):
        for term in terms:
            pts = [(p[xkey], p[term]) for p in curve if term in p]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="." if len(pts) < 30 else None,
                    lw=2 if term == "loss" else 1, label="total" if term == "loss" else term[len("loss_"):])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("distillation loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("self-distillation of the ternary student")
    fig.tight_layout()
    _save_figure(fig, path)
    return str(path)


def write_plots(out_dir: Path, curve: Sequence[dict], reports: Sequence[Any], reference: Any) -> dict[str, str]:
    """The training curve and the quality vs size / speed plot (``ternary_hf.evaluation.plot_quality_vs_size``)."""
    from ..evaluation import plot_quality_vs_size

    plot_training_curve(curve, out_dir / TRAINING_CURVE)
    plot_quality_vs_size(reports, out_dir / QUALITY_PLOT, reference=reference)
    return {"training_curve": TRAINING_CURVE, "quality_vs_size_speed": QUALITY_PLOT}
