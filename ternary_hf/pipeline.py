"""The main job in one call: ternarize -> self-distil -> save packed -> reload -> evaluate against fp32 ->
FAISS search -> report folder.

>>> from ternary_hf.pipeline import QuickstartConfig, run_quickstart
>>> result = run_quickstart(QuickstartConfig(out="out/quickstart", fast=True))
>>> print(result.summary)

Everything reuses the package's own pieces: the distillation recipe and parser of `ternary-hf distill`
(:mod:`ternary_hf.commands.distill`), :class:`~ternary_hf.training.TernaryDistillationTrainer` with its
wall-time budget, :mod:`ternary_hf.evaluation` (suite, teacher fidelity, alternated speed runs),
:mod:`ternary_hf.ann` (FAISS), :func:`ternary_hf.footprint` and the model card of :mod:`ternary_hf.hub`.

The report folder is built in a hidden temporary folder next to ``out`` and renamed into place at the
end, so an interrupted or failed run leaves no half-written report.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

MARKER_KIND = "ternary-hf-quickstart"
MODEL_SUBDIR = "model"
DEFAULT_MINUTES = 18.0  # training budget of the default run: with evaluation, < 30 min on 2 CPU cores


class QuickstartError(ValueError):
    """Bad input (model, corpus, output folder): raised before any work, with what to do instead."""


@dataclass(frozen=True)
class Sizes:
    """How much work each stage does (the default run vs the `--fast` smoke run).

    Attributes:
        max_steps: training steps (None: the time budget alone ends training).
        max_texts: distillation texts used (a seeded random subset; None: all).
        warmup_steps: learning-rate warm-up (None: the recipe's).
        logging_steps: steps between training-curve points (None: the recipe's).
        batch_size / max_length: training batch size and token truncation (None: the recipe's).
        tasks: built-in evaluation tasks (``ternary_hf.evaluation.default_tasks`` names).
        wordnet_queries: queries of the WordNet held-out retrieval task.
        wordnet_docs: documents of that task's corpus (relevant ones + random distractors; None: all 14,190).
        fidelity_short / fidelity_long: held-out texts for the cosine-to-fp32 measures (None: all 300 long).
        speed_short / speed_long / speed_repeats: texts and alternated rounds of the speed measurement.
        index_docs: documents indexed when the corpus is the user's (``--corpus``).
        sample_queries: sample searches printed and written to the report.
    """

    max_steps: int | None
    max_texts: int | None
    warmup_steps: int | None
    logging_steps: int | None
    batch_size: int | None
    max_length: int | None
    tasks: tuple[str, ...]
    wordnet_queries: int
    wordnet_docs: int | None
    fidelity_short: int
    fidelity_long: int | None
    speed_short: int
    speed_long: int
    speed_repeats: int
    index_docs: int
    sample_queries: int = 3


FULL = Sizes(max_steps=None, max_texts=None, warmup_steps=None, logging_steps=None, batch_size=None, max_length=None,
             tasks=("lee50", "lee50_graded", "wordsim353", "simlex999", "polarity", "wordnet"),
             wordnet_queries=1000, wordnet_docs=None, fidelity_short=1000, fidelity_long=None,
             speed_short=128, speed_long=32, speed_repeats=5, index_docs=20_000)
FAST = Sizes(max_steps=5, max_texts=160, warmup_steps=2, logging_steps=1, batch_size=8, max_length=64,
             tasks=("wordsim353", "wordnet"),
             wordnet_queries=30, wordnet_docs=300, fidelity_short=48, fidelity_long=8,
             speed_short=16, speed_long=4, speed_repeats=2, index_docs=300)


@dataclass
class QuickstartConfig:
    """Options of :func:`run_quickstart` (the `ternary-hf quickstart` flags).

    Attributes:
        out: report folder to create (refused if it exists with files, unless ``overwrite``).
        model: fp model to ternarize (local path or Hub id); None: the bundled all-MiniLM-L6-v2.
        corpus: distillation corpus (.txt one text per line, .jsonl/.json, .csv/.tsv, or a folder saved with
            ``datasets.Dataset.save_to_disk``); also the corpus of the FAISS sample searches. None: the
            `ternary-hf distill` default data (WordNet glosses/examples + Wikipedia paragraphs), and the
            searches run over the held-out WordNet definitions.
        text_column: the corpus column holding text (default: auto-detected).
        minutes: training wall-time budget; None: 20 (default run) or no budget (``fast``: step-bounded).
        fast: smoke run (a few steps, small evaluation subsets, small index): minutes, not half an hour.
        overwrite: replace an existing, non-empty ``out``.
        seed: seed of the training run and of every sampled subset.
        show_progress: progress bars (training, corpus encoding).
        distill_args: extra `ternary-hf distill` flags (e.g. ``["--learning_rate", "1e-4"]``), applied last.
    """

    out: str = "out/quickstart"
    model: str | None = None
    corpus: str | None = None
    text_column: str | None = None
    minutes: float | None = None
    fast: bool = False
    overwrite: bool = False
    seed: int = 0
    show_progress: bool = True
    distill_args: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> Sizes:
        return FAST if self.fast else FULL


@dataclass
class QuickstartResult:
    """What :func:`run_quickstart` produced: the report folder, its JSON results and the printed summary."""

    out: Path
    results: dict[str, Any]
    summary: str

    @property
    def model_dir(self) -> Path:
        return self.out / MODEL_SUBDIR


# --------------------------------------------------------------------------- input checks
def resolve_model(model: str | None) -> str:
    """The model source to use; raises :class:`QuickstartError` if it cannot be loaded."""
    from transformers import AutoConfig

    from .defaults import default_model_path

    source = model or default_model_path()
    path = Path(source).expanduser()
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
    if path.exists():
        if not path.is_dir():
            raise QuickstartError(f"--model {source} is a file; pass the model folder (with config.json) or a Hub id.")
        source = str(path)
    elif looks_like_path:
        raise QuickstartError(f"--model {source}: no such folder (and it is not a Hub id 'namespace/name').")
    try:
        AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        offline = " (HF_HUB_OFFLINE is set: only models already in the cache can be used)" \
            if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") and not path.exists() else ""
        raise QuickstartError(f"--model {source}: cannot load its config{offline}: {first}") from exc
    return source


def load_corpus(corpus: str, text_column: str | None = None) -> Any:
    """The user corpus as a `datasets.Dataset` with a `text` column; raises :class:`QuickstartError`."""
    from .training import load_texts

    path = Path(corpus).expanduser()
    if not path.exists():
        raise QuickstartError(f"--corpus {corpus}: no such file or folder.")
    try:
        if path.is_dir():
            import datasets

            try:
                source = datasets.load_from_disk(str(path))
            except (FileNotFoundError, ValueError) as exc:
                raise QuickstartError(
                    f"--corpus {corpus} is a folder but not a dataset saved with Dataset.save_to_disk ({exc}); "
                    "pass a .txt/.jsonl/.csv file or such a folder.") from exc
        else:
            if not path.read_bytes().strip():
                raise QuickstartError(f"--corpus {corpus} is empty: it needs at least one text.")
            source = path
        return load_texts(source, text_column)
    except QuickstartError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise QuickstartError(f"--corpus {corpus}: {exc}") from exc
    except Exception as exc:  # datasets' builders raise their own error types on malformed files
        raise QuickstartError(f"--corpus {corpus}: cannot read it as a text corpus ({type(exc).__name__}: {exc}).") \
            from exc


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved output folder; raises if it exists with files and ``overwrite`` is not set."""
    path = Path(out).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QuickstartError(f"--out {path} exists and is a file; choose a folder name.")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not overwrite:
            previous = (path / "results.json").is_file() and _is_quickstart_report(path)
            what = "a previous quickstart report" if previous else f"files ({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''})"
            raise QuickstartError(
                f"--out {path} already holds {what}; choose another --out, or pass --overwrite to replace it.")
    return path


def _is_quickstart_report(path: Path) -> bool:
    try:
        return json.loads((path / "results.json").read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished report from ``staging`` to ``out`` (replacing ``out`` only with ``overwrite``)."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif not overwrite:
            raise QuickstartError(f"--out {out} was created by something else during the run; the finished report "
                                  f"is kept in {staging}.")
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def _normal_permissions(root: Path) -> None:
    """Temp dirs/files are created private (0700/0600); give the finished report the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        wanted = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode in (0o700, 0o600):
            path.chmod(wanted)


def write_json_atomic(path: Path, payload: Any) -> None:
    from .evaluation.report import _json_default, atomic_write_bytes

    atomic_write_bytes(path, json.dumps(payload, indent=2, default=_json_default).encode())


# --------------------------------------------------------------------------- training
class TrainingMonitor(TrainerCallback):
    """Progress bar over the time budget (or the steps) and the training curve with wall time."""

    def __init__(self, budget_seconds: float | None, max_steps: int | None, show: bool = True) -> None:
        self.budget, self.max_steps, self.show = budget_seconds, max_steps, show
        self.start = 0.0
        self.curve: list[dict[str, float]] = []
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.start = time.monotonic()
        if self.budget is not None:
            self.bar = tqdm(total=round(self.budget), desc="distilling", unit="s", disable=not self.show,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=self.max_steps, desc="distilling", unit="step", disable=not self.show)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        if self.budget is not None:
            self.bar.n = min(round(time.monotonic() - self.start), self.bar.total)
            self.bar.set_postfix(step=state.global_step, refresh=False)
            self.bar.refresh()
        else:
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            point = {"step": state.global_step, "minutes": (time.monotonic() - self.start) / 60.0}
            point.update({k: float(v) for k, v in logs.items() if k.startswith("loss") or k == "learning_rate"})
            self.curve.append(point)
            if self.bar is not None:
                self.bar.set_postfix(step=state.global_step, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def distill_argv(config: QuickstartConfig, trainer_dir: Path) -> list[str]:
    """The `ternary-hf distill` command line that the quickstart trains with (recipe defaults + budget)."""
    sizes = config.sizes
    minutes = config.minutes if config.minutes is not None else (None if config.fast else DEFAULT_MINUTES)
    argv = ["--output_dir", str(trainer_dir), "--seed", str(config.seed), "--save_strategy", "no",
            "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--time_budget_minutes", str(minutes or 0)]
    if config.model:
        argv += ["--model", config.model]
    if sizes.max_steps is not None:
        argv += ["--max_steps", str(sizes.max_steps)]
    if sizes.max_texts is not None:
        argv += ["--max_texts", str(sizes.max_texts)]
    if sizes.warmup_steps is not None:
        argv += ["--warmup_steps", str(sizes.warmup_steps)]
    if sizes.logging_steps is not None:
        argv += ["--logging_steps", str(sizes.logging_steps)]
    if sizes.batch_size is not None:
        argv += ["--per_device_train_batch_size", str(sizes.batch_size)]
    if sizes.max_length is not None:
        argv += ["--max_length", str(sizes.max_length)]
    if config.text_column:
        argv += ["--text_column", config.text_column]
    return argv + list(config.distill_args)


def build_student_trainer(command_args: Any, dargs: Any, targs: Any, data: Any, callbacks: list) -> Any:
    """The QAT student of `command_args.model` and its `TernaryDistillationTrainer` on `data` (as
    `ternary-hf distill` builds it, but with data already loaded)."""
    from transformers import AutoModel, AutoTokenizer, PrinterCallback

    from .config import TernaryConfig
    from .training import TernaryDistillationTrainer

    config = TernaryConfig(granularity=command_args.granularity, rule=command_args.rule,
                           group_size=command_args.group_size, mode="qat")
    student = AutoModel.from_pretrained(command_args.model, quantization_config=config)
    tokenizer = AutoTokenizer.from_pretrained(command_args.model)
    trainer = TernaryDistillationTrainer(model=student, args=targs, train_dataset=data, distillation_args=dargs,
                                         processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the monitor's progress bar shows the loss; no log dict per step
    return trainer


def small_wordnet_task(task: Any, n_docs: int, seed: int) -> Any:
    """``task`` with its corpus cut to the relevant documents + random distractors (``n_docs`` in all)."""
    from .data import RetrievalTask

    relevant = sorted({d for docs in task.relevant_docs.values() for d in docs})
    others = sorted(set(task.corpus) - set(relevant))
    keep = set(relevant) | set(random.Random(seed).sample(others, max(0, min(len(others), n_docs - len(relevant)))))
    corpus = {k: v for k, v in task.corpus.items() if k in keep}
    return RetrievalTask(task.name, dict(task.queries), corpus, {q: set(d) for q, d in task.relevant_docs.items()})


def evaluation_data(sizes: Sizes, seed: int) -> tuple[list, Any, Any]:
    """(tasks, fidelity sets, the WordNet retrieval task) for ``sizes``."""
    from .data import gensim_sets, wordnet
    from .evaluation import FidelitySets, default_tasks

    names = [n for n in sizes.tasks if n != "wordnet"]
    tasks = default_tasks(names, seed=seed) if names else []
    wn = wordnet.retrieval_task(n_queries=sizes.wordnet_queries, seed=seed)
    if sizes.wordnet_docs is not None:
        wn = small_wordnet_task(wn, sizes.wordnet_docs, seed)
    if "wordnet" in sizes.tasks:
        tasks.append(wn)
    examples = sorted({e for s in wordnet.heldout_synsets() for e in s.examples})
    short = random.Random(seed).sample(examples, min(sizes.fidelity_short, len(examples)))
    long = gensim_sets.lee_background_documents()
    if sizes.fidelity_long is not None:
        long = long[: sizes.fidelity_long]
    sets = FidelitySets(short=short, long=long, queries=list(wn.queries.values()), corpus=list(wn.corpus.values()),
                        k=min(10, len(wn.corpus)))
    return tasks, sets, wn


def speed_texts(sizes: Sizes) -> list[str]:
    from .evaluation.suite import speed_texts as held_out_speed_texts

    return held_out_speed_texts(sizes.speed_short, sizes.speed_long)


# --------------------------------------------------------------------------- ANN search
def _encode(model: Any, texts: list[str], show: bool, desc: str) -> Any:
    import numpy as np

    from .ann import encode_chunks

    chunks = [emb for _, emb in encode_chunks(model, ((str(i), t) for i, t in enumerate(texts)), total=len(texts),
                                              chunk_size=4096, show_progress_bar=show)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def ann_search(models: dict[str, Any], caches: dict[str, Any], corpus_texts: dict[str, str],
               queries: dict[str, str], task: Any | None, sample_ids: list[str], show: bool,
               index_type: str = "hnsw", k: int = 10) -> dict[str, Any]:
    """FAISS ``index_type`` indexes of ``corpus_texts`` under each model: recall@k against the model's own
    exact search, agreement of the top-k with the first model's exact top-k, qrels metrics when ``task`` has
    them, index size/build time, and the top hits of the ``sample_ids`` queries."""
    from .ann import AnnIndex, qrels_metrics, recall_against

    ids, texts = list(corpus_texts), list(corpus_texts.values())
    qids, qtexts = list(queries), list(queries.values())
    rows, samples, reference_exact = [], {q: {"query": queries[q], "hits": {}} for q in sample_ids}, None
    for label, model in models.items():
        cache = caches.get(label)
        # The evaluation already encoded the WordNet corpus: its cache serves those embeddings again.
        corpus_emb = cache.encode(texts) if cache is not None else _encode(model, texts, show, label)
        query_emb = cache.encode(qtexts) if cache is not None else _encode(model, qtexts, False, label)
        exact_hits, _ = AnnIndex.from_embeddings(corpus_emb, ids, "flat").search_embeddings(query_emb, k)
        reference_exact = reference_exact or exact_hits
        index = AnnIndex.from_embeddings(corpus_emb, ids, index_type, model_id=label)
        t0 = time.perf_counter()
        hits, scores = index.search_embeddings(query_emb, k)
        search_s = time.perf_counter() - t0
        row = {"model": label, "index": index_type, "documents": len(ids), "queries": len(qids),
               "build_s": index.build_seconds, "index_bytes": index.nbytes(),
               "queries_per_s": len(qids) / search_s if search_s > 0 else float("nan"),
               f"recall@{k}_vs_own_exact": recall_against(exact_hits, hits, k),
               f"top{k}_agreement_with_{next(iter(models))}_exact": recall_against(reference_exact, hits, k)}
        if task is not None and task.relevant_docs:
            row.update(qrels_metrics(task, qids, hits, scores))
        rows.append(row)
        position = {q: i for i, q in enumerate(qids)}
        for q in sample_ids:
            i = position[q]
            samples[q]["hits"][label] = [{"id": d, "text": corpus_texts[d], "score": s}
                                         for d, s in zip(hits[i][:3], scores[i][:3])]
            if task is not None:
                samples[q]["relevant"] = sorted(task.relevant_docs.get(q, ()))
    return {"rows": rows, "samples": list(samples.values()), "k": k}


def corpus_search_sets(texts: list[str], n_docs: int, n_queries: int, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """(corpus, queries) drawn from a user corpus: ``n_queries`` texts held out of the indexed documents."""
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    rng = random.Random(seed)
    order = rng.sample(range(len(unique)), len(unique))
    n_q = min(n_queries, max(1, len(unique) // 2)) if len(unique) > 1 else 1
    query_idx = order[:n_q] if len(unique) > 1 else order
    doc_idx = order[n_q : n_q + n_docs] if len(unique) > 1 else order
    return {str(i): unique[i] for i in sorted(doc_idx)}, {f"q{i}": unique[i] for i in query_idx}


# --------------------------------------------------------------------------- the pipeline
class _Stages:
    """Numbered stage messages with wall times (recorded in results.json)."""

    def __init__(self, total: int, printer: Callable[[str], None]) -> None:
        self.total, self.print, self.n = total, printer, 0
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0
        self._run_start = time.monotonic()

    def start(self, name: str, message: str) -> None:
        self.stop()
        self.n += 1
        self._name, self._t0 = name, time.monotonic()
        self.print(f"[{self.n}/{self.total} at {(self._t0 - self._run_start) / 60:.1f} min] {message}")

    def stop(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.monotonic() - self._t0, 2)
            self._name = None


def _card_eval_results(comparison: Any) -> tuple[list[dict], list[dict]]:
    """Model-card evaluation results (huggingface_hub `EvalResult` fields) of the model and of fp32."""
    kinds = {r.task: r.kind for r in comparison.model.results}
    task_types = {"pairs": "sentence-similarity", "retrieval": "text-retrieval", "classification": "text-classification"}
    ternary, fp32 = [], []
    for row in comparison.rows:
        base = {"task_type": task_types.get(kinds.get(row["task"], ""), "feature-extraction"),
                "dataset_type": f"ternary-hf/{row['task']}", "dataset_name": row["task"],
                "metric_type": row["metric"], "metric_name": row["metric"]}
        ternary.append({**base, "metric_value": round(float(row["model"]), 4)})
        fp32.append({**base, "metric_value": round(float(row["baseline"]), 4)})
    return ternary, fp32


def run_quickstart(config: QuickstartConfig, printer: Callable[[str], None] = print) -> QuickstartResult:
    """Run the whole pipeline and write the report folder ``config.out``; see the module docstring.

    Raises:
        QuickstartError: bad model / corpus / output folder (checked before any training).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from .commands.distill import load_distillation_texts, parse_args
    from .config import TernaryConfig
    from .defaults import DEFAULT_MODEL_ID
    from .evaluation import Comparison, evaluate, load_model, measure_speed, teacher_fidelity
    from .footprint import footprint
    from .hub import CardInfo, inspect_checkpoint, render_model_card
    from . import pipeline_report as report

    t_start = time.monotonic()
    load_start = os.getloadavg()
    sizes = config.sizes
    out = check_output_dir(config.out, config.overwrite)
    source = resolve_model(config.model)
    is_default_model = config.model is None
    user_corpus = load_corpus(config.corpus, config.text_column) if config.corpus else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stages = _Stages(7, printer)
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar per model load: the stages say what happens
    try:
        # 1. ternarize (post-training): the starting point, and the baseline that distillation must beat
        stages.start("ternarize", f"ternarizing {source} (post-training, packed 2-bit)")
        trainer_dir = staging / ".trainer"
        argv = distill_argv(config, trainer_dir)
        command_args, dargs, targs = parse_args(argv, prog="ternary-hf quickstart")
        command_args.model = source
        ptq_config = TernaryConfig(granularity=command_args.granularity, rule=command_args.rule,
                                   group_size=command_args.group_size)
        fp32 = load_model(source, label="fp32")
        ptq = load_model(SentenceTransformer(source, device="cpu", model_kwargs={"quantization_config": ptq_config}),
                         label="PTQ")

        # 2. self-distil within the budget
        if user_corpus is not None:
            data = user_corpus.shuffle(seed=config.seed)
            if command_args.max_texts is not None:
                data = data.select(range(min(command_args.max_texts, len(data))))
            corpus_name = str(config.corpus)
        else:
            data = load_distillation_texts(command_args.data, command_args.max_texts, seed=targs.seed)
            corpus_name = " + ".join(command_args.data)
        budget = dargs.time_budget_minutes
        stages.start("distill", f"self-distilling on {len(data):,} texts ({corpus_name}); "
                     + (f"budget {budget:g} min" if budget else f"{targs.max_steps} steps"))
        monitor = TrainingMonitor(budget * 60.0 if budget else None, None if budget else targs.max_steps,
                                  config.show_progress)
        trainer = build_student_trainer(command_args, dargs, targs, data, [monitor])
        t0 = time.monotonic()
        trainer.train()
        train_seconds = time.monotonic() - t0

        # 3. save the packed checkpoint, then reload it from disk as the model under test
        stages.start("save", "saving the packed checkpoint and reloading it from disk")
        model_dir = staging / MODEL_SUBDIR
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
        bars = config.show_progress and not config.fast
        base_rep, ptq_rep, dist_rep = (evaluate(m, tasks, show_progress_bar=bars) for m in (fp32, ptq, distilled))
        for rep in (ptq_rep, dist_rep):
            rep.fidelity = teacher_fidelity(rep.cache, base_rep.cache, sets)
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
            "distill_argv": [("out/distilled" if a == str(trainer_dir) else a) for a in argv]
            + (["--data", str(config.corpus)] if config.corpus else []),
            "training": {"steps": steps, "minutes": train_seconds / 60.0, "budget_minutes": budget,
                         "texts": len(data), "batch_size": targs.per_device_train_batch_size,
                         "learning_rate": targs.learning_rate, "curve": monitor.curve, "log_history": log_history},
            "quality": {name: cmp.to_dict() for name, cmp in comparisons.items()},
            "fidelity": {"PTQ": ptq_rep.fidelity, "distilled": dist_rep.fidelity},
            "footprint": {"checkpoint": fp_ckpt.as_dict(), "fp32": base_rep.size, "PTQ": ptq_rep.size,
                          "distilled": dist_rep.size},
            "speed_texts_per_s": {"fp32": speeds[0], "PTQ": speeds[1], "distilled": speeds[2],
                                  "texts": len(speed_texts(sizes)), "repeats": sizes.speed_repeats,
                                  "torch_threads": torch.get_num_threads()},
            "ann": ann,
            "checkpoint": {"path": MODEL_SUBDIR, "ternary_layers": len(checkpoint_info.ternary_layers),
                           "kind": checkpoint_info.kind},
        }
        ternary_evals, fp32_evals = _card_eval_results(comparisons["distilled"])
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
        from .evaluation.report import atomic_write_bytes

        atomic_write_bytes(model_dir / "README.md", render_model_card(model_dir, card=card).encode())
        plots = report.write_plots(staging, monitor.curve, [base_rep, ptq_rep, dist_rep], base_rep)
        results["plots"] = plots
        stages.stop()
        results["stage_seconds"] = dict(stages.times)
        results["wall_minutes"] = (time.monotonic() - t_start) / 60.0
        results["load_avg"] = {"start": load_start, "end": os.getloadavg()}
        summary = report.summary_table(results)
        atomic_write_bytes(staging / "report.md", report.report_markdown(results, comparisons, fp_ckpt).encode())
        write_json_atomic(staging / "results.json", results)
        _normal_permissions(staging)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    _publish(staging, out, config.overwrite)
    printer("")
    printer(summary)
    printer(f"\nReport: {out / 'report.md'}   checkpoint: {out / MODEL_SUBDIR} "
            f"(publish: ternary-hf push {out / MODEL_SUBDIR} <your-name>/<repo>)   "
            f"total {results['wall_minutes']:.1f} min")
    return QuickstartResult(out, results, summary)
