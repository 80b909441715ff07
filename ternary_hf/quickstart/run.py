"""`run_quickstart`: ternarize -> self-distil -> save packed -> reload -> evaluate against fp32 -> FAISS search ->
report folder, in seven numbered stages with one progress display each.

The report folder is built in a hidden temporary folder next to ``out`` and renamed into place at the end
(`ternary_hf.fileio.publish_directory`), so an interrupted or failed run leaves no half-written report.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from . import report
from .config import MARKER_KIND, MODEL_SUBDIR, QuickstartConfig, QuickstartError, QuickstartResult, training_plan
from .inputs import check_output_dir, load_corpus, resolve_model
from .stages import Stages, ann_search, card_eval_results, corpus_search_sets, evaluation_data, speed_texts, stage_bar


def publish_report(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished report from ``staging`` onto ``out`` (replacing ``out`` only with ``overwrite``); if ``out``
    appeared during the run and may not be replaced, the report stays in ``staging`` and the error names it."""
    from ..fileio import publish_directory

    try:
        publish_directory(staging, out, overwrite=overwrite)
    except FileExistsError as exc:
        raise QuickstartError(f"--out {out} was created by something else during the run; the finished report "
                              f"is kept in {staging}.") from exc


def _evaluate_all(models: list[Any], tasks: list, sets: Any, show: bool) -> list[Any]:
    """Reports of fp32, PTQ and distilled on ``tasks``, with teacher fidelity to fp32: one bar for the stage."""
    from ..evaluation import evaluate, teacher_fidelity

    bar = stage_bar(len(models) * len(tasks) + len(models) - 1, "evaluating", "task", show)
    reports = []
    for loaded in models:
        bar.set_postfix(model=loaded.label, refresh=False)
        reports.append(evaluate(loaded, tasks, on_task_done=lambda _: bar.update(1)))
    for rep in reports[1:]:
        rep.fidelity = teacher_fidelity(rep.cache, reports[0].cache, sets)
        bar.update(1)
    bar.close()
    return reports


def run_quickstart(config: QuickstartConfig, printer: Callable[[str], None] = print) -> QuickstartResult:
    """Run the whole pipeline and write the report folder ``config.out``; see the module docstring.

    Raises:
        QuickstartError: bad model / corpus / output folder (checked before any training).
    """
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from ..defaults import DEFAULT_MODEL_ID
    from ..evaluation import Comparison, load_model, measure_speed
    from ..fileio import atomic_write_json, atomic_write_text
    from ..evaluation.report import json_default
    from ..footprint import footprint
    from ..hub import CardInfo, inspect_checkpoint, render_model_card
    from ..integration import quantize_embeddings
    from ..training.callbacks import CurveRecorder, TrainingProgress
    from ..training.recipe import build_distillation, load_distillation_texts

    t_start = time.monotonic()
    load_start = os.getloadavg()
    sizes = config.sizes
    out = check_output_dir(config.out, config.overwrite)
    source = resolve_model(config.model)
    is_default_model = config.model is None
    user_corpus = load_corpus(config.corpus, config.text_column) if config.corpus else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stages = Stages(7, printer)
    # One display per stage: no "Loading weights" bar per model load, no "Tokenizing" bar before training
    bars_were_on = hf_logging.is_progress_bar_enabled(), not datasets.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        # 1. ternarize (post-training): the starting point, and the baseline that distillation must beat
        stages.start("ternarize", f"ternarizing {source} (post-training, packed 2-bit linears, "
                     f"{config.embedding_dtype} embedding tables)")
        trainer_dir = staging / ".trainer"
        plan = training_plan(config, source, trainer_dir)
        recipe, dargs, targs = plan.recipe, plan.distillation, plan.training
        ptq_config = recipe.ternary_config("inference", embedding_dtype=config.embedding_dtype)
        fp32 = load_model(source, label="fp32")
        ptq = load_model(SentenceTransformer(source, device="cpu", model_kwargs={"quantization_config": ptq_config}),
                         label="PTQ")

        # 2. self-distil within the budget
        if user_corpus is not None:
            data = user_corpus.shuffle(seed=config.seed)
            if recipe.max_texts is not None:
                data = data.select(range(min(recipe.max_texts, len(data))))
            corpus_name = str(config.corpus)
        else:
            data = load_distillation_texts(recipe.data, recipe.max_texts, seed=targs.seed)
            corpus_name = " + ".join(recipe.data)
        budget = dargs.time_budget_minutes
        stages.start("distill", f"self-distilling on {len(data):,} texts ({corpus_name}); "
                     + (f"budget {budget:g} min" if budget else f"{targs.max_steps} steps"))
        curve = CurveRecorder()
        trainer = build_distillation(recipe, dargs, targs, data=data, callbacks=[curve])
        trainer.remove_callback(PrinterCallback)  # the progress bar shows the loss; no log dict per step
        trainer.add_callback(TrainingProgress(trainer.time_budget, print_logs=False, show=config.show_progress))
        t0 = time.monotonic()
        trainer.train()
        train_seconds = time.monotonic() - t0

        # 3. save the packed checkpoint, then reload it from disk as the model under test
        stages.start("save", "saving the packed checkpoint and reloading it from disk")
        model_dir = staging / MODEL_SUBDIR
        if config.embedding_dtype != "float":
            quantize_embeddings(trainer.model, config.embedding_dtype)
        trainer.save_model(str(model_dir))
        log_history = list(trainer.state.log_history)
        steps = trainer.state.global_step
        del trainer
        shutil.rmtree(trainer_dir, ignore_errors=True)
        distilled = load_model(str(model_dir), label="distilled")
        checkpoint_info = inspect_checkpoint(model_dir)  # the folder `ternary-hf push` will accept

        # 4. evaluate fp32, PTQ and the reloaded distilled model on the same tasks
        stages.start("evaluate", f"evaluating fp32, PTQ and distilled on {', '.join(sizes.tasks)} + fidelity")
        tasks, sets, wn_task = evaluation_data(sizes, config.seed)
        base_rep, ptq_rep, dist_rep = _evaluate_all([fp32, ptq, distilled], tasks, sets, config.show_progress)
        comparisons = {"PTQ": Comparison.build(ptq_rep, base_rep), "distilled": Comparison.build(dist_rep, base_rep)}

        # 5. speed: alternated runs in this process, medians
        stages.start("speed", "measuring encoding speed (fp32 / PTQ / distilled alternated, median)")
        speeds = measure_speed([fp32, ptq, distilled], speed_texts(sizes), repeats=sizes.speed_repeats)
        for rep, s in zip((base_rep, ptq_rep, dist_rep), speeds):
            rep.speed = s

        # 6. FAISS index + sample searches
        models = {"fp32": fp32.model, "distilled": distilled.model}
        if user_corpus is None:
            stages.start("ann", f"FAISS HNSW index over {len(wn_task.corpus):,} held-out WordNet definitions")
            rng = random.Random(config.seed)
            sample_ids = rng.sample(sorted(wn_task.queries), min(sizes.sample_queries, len(wn_task.queries)))
            ann = ann_search(models, {"fp32": base_rep.cache, "distilled": dist_rep.cache}, wn_task.corpus,
                             wn_task.queries, wn_task, sample_ids, config.show_progress)
            ann["corpus"] = "WordNet held-out definitions (queries: held-out example sentences)"
        else:
            docs, queries = corpus_search_sets(list(user_corpus["text"]), sizes.index_docs, sizes.sample_queries,
                                               config.seed)
            stages.start("ann", f"FAISS HNSW index over {len(docs):,} texts of {config.corpus}")
            ann = ann_search(models, {}, docs, queries, None, list(queries), config.show_progress)
            ann["corpus"] = f"{config.corpus} ({len(docs):,} texts; queries: {len(queries)} other texts of it)"
        printer(report.samples_text(ann))

        # 7. report folder
        stages.start("report", f"writing the report to {out}")
        fp_ckpt = footprint(model_dir)
        results: dict[str, Any] = {
            "kind": MARKER_KIND,
            "model": source,
            "base_model": DEFAULT_MODEL_ID if is_default_model else config.model,
            "bundled": is_default_model,
            "corpus": corpus_name,
            "fast": config.fast,
            "config": asdict(config),
            "distill_argv": plan.reproduce_argv + (["--data", str(config.corpus)] if config.corpus else []),
            "training": {"steps": steps, "minutes": train_seconds / 60.0, "budget_minutes": budget,
                         "texts": len(data), "batch_size": targs.per_device_train_batch_size,
                         "learning_rate": targs.learning_rate, "curve": curve.curve, "log_history": log_history},
            "quality": {name: cmp.to_dict() for name, cmp in comparisons.items()},
            "fidelity": {"PTQ": ptq_rep.fidelity, "distilled": dist_rep.fidelity},
            "footprint": {"checkpoint": fp_ckpt.as_dict(), "embedding_dtype": config.embedding_dtype,
                          "fp32": base_rep.size, "PTQ": ptq_rep.size, "distilled": dist_rep.size},
            "speed_texts_per_s": {"fp32": speeds[0], "PTQ": speeds[1], "distilled": speeds[2],
                                  "texts": len(speed_texts(sizes)), "repeats": sizes.speed_repeats,
                                  "torch_threads": torch.get_num_threads()},
            "ann": ann,
            "checkpoint": {"path": MODEL_SUBDIR, "ternary_layers": len(checkpoint_info.ternary_layers),
                           "kind": checkpoint_info.kind},
        }
        ternary_evals, fp32_evals = card_eval_results(comparisons["distilled"])
        card = CardInfo(
            base_model=results["base_model"] if results["base_model"] and not Path(results["base_model"]).exists() else None,
            eval_results=ternary_evals, fp32_eval_results=fp32_evals,
            distillation={"teacher": "the full-precision model itself (self-distillation)",
                          "data": corpus_name, "texts": len(data), "steps": steps,
                          "training minutes": round(train_seconds / 60.0, 1),
                          "batch size": targs.per_device_train_batch_size, "learning rate": targs.learning_rate,
                          "command": "ternary-hf quickstart" + (" --fast" if config.fast else "")},
            description=(f"Made by `ternary-hf quickstart`: {steps} steps ({train_seconds / 60:.1f} min) of "
                         f"self-distillation; mean cosine to fp32 {dist_rep.fidelity['cos_short_mean']:.3f} on held-out "
                         f"short texts, {comparisons['distilled'].mean_retained:.1f}% of fp32 quality (mean retained)."),
        )
        atomic_write_text(model_dir / "README.md", render_model_card(model_dir, card=card))
        results["plots"] = report.write_plots(staging, curve.curve, [base_rep, ptq_rep, dist_rep], base_rep)
        stages.stop()
        results["stage_seconds"] = dict(stages.times)
        results["wall_minutes"] = (time.monotonic() - t_start) / 60.0
        results["load_avg"] = {"start": load_start, "end": os.getloadavg()}
        summary = report.summary_table(results)
        atomic_write_text(staging / "report.md", report.report_markdown(results, comparisons, fp_ckpt))
        atomic_write_json(staging / "results.json", results, default=json_default)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bars_were_on[0]:
            hf_logging.enable_progress_bar()
        if bars_were_on[1]:
            datasets.enable_progress_bars()
    publish_report(staging, out, config.overwrite)
    printer("")
    printer(summary)
    printer(f"\nReport: {out / 'report.md'}   checkpoint: {out / MODEL_SUBDIR} "
            f"(publish: ternary-hf push {out / MODEL_SUBDIR} <your-name>/<repo>)   "
            f"total {results['wall_minutes']:.1f} min")
    return QuickstartResult(out, results, summary)
