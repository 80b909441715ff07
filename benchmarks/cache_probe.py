"""Is a variant's batch-1 time sensitive to cold caches? One variant of `cpu_speed.py`, alone in this process, at
batch 1 x 32 tokens: median of 30 calls (20 ms pause before each), with warm caches and with 64 MB written
between calls (evicting its weights), best of two blocks each.

    HF_HUB_OFFLINE=1 python benchmarks/cache_probe.py "ORT int8 dynamic" [--workdir DIR]
"""
import sys, time, statistics, torch
import argparse
import os
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_speed as b  # noqa: E402
from pathlib import Path
from transformers import AutoTokenizer
torch.set_num_threads(2)
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("variant", choices=b.VARIANTS)
ap.add_argument("--workdir", type=Path, default=None)
args = ap.parse_args()
paths = b.build_artifacts(args.workdir or Path(tempfile.mkdtemp(prefix="ternary-cpu-speed-")))
tok = AutoTokenizer.from_pretrained(b.minilm_path())
run = b.load_runner(args.variant, paths, 2)
junk = torch.ones(16 * 2**20)  # 64 MB
inputs = b.batch(tok, 1, 32)
for _ in range(5): run(inputs)
res = {}
for flush in (False, True, False, True):
    ts = []
    for _ in range(30):
        if flush: junk.add_(1.0)
        time.sleep(0.02)
        t = time.perf_counter(); run(inputs); ts.append(time.perf_counter() - t)
    res.setdefault(flush, []).append(statistics.median(ts) * 1000)
print(args.variant, "1x32 ms: warm caches %.2f, caches evicted %.2f" % (min(res[False]), min(res[True])))
