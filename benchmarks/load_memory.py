"""Peak memory of loading the bundled all-MiniLM-L6-v2: fp32, quantize-on-load, and the packed checkpoint.

Each load runs in a fresh subprocess; after imports the peak-RSS mark is reset, so the numbers are the
cost of the load itself: peak RSS growth, RSS after the load (every tensor touched once), and anonymous
(heap) memory after the load, which excludes file pages that safetensors maps from disk. Loading the packed checkpoint reads the
2-bit buffers directly: no fp32 copy of the linear weights is ever built.

    python benchmarks/load_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import os, json, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch, transformers, ternary_hf
from transformers import AutoModel
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS high-water mark so import-time peaks do not count
base, base_anon = status("VmRSS"), status("RssAnon")
path, quantize = sys.argv[1], sys.argv[2] == "1"
t = time.perf_counter()
kw = {"quantization_config": ternary_hf.TernaryConfig()} if quantize else {}
m = AutoModel.from_pretrained(path, **kw)
elapsed = time.perf_counter() - t
# Touch every tensor so lazily mapped weights count, then hand freed heap back to the OS.
checksum = sum(float(t.float().sum()) if t.dtype != torch.uint8 else int(t.sum()) for t in m.state_dict().values())
import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({"peak_growth": status("VmHWM") - base, "after_growth": status("VmRSS") - base,
                  "anon_growth": status("RssAnon") - base_anon, "seconds": elapsed,
                  "ternary": ternary_hf.is_ternary_model(m)}))
"""


def run(path: str, quantize: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, "1" if quantize else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ternary_hf
    from transformers import AutoModel

    from ternary_hf.defaults import default_model_path

    from transformers import BertConfig, BertModel

    with tempfile.TemporaryDirectory() as tmp:
        # MiniLM is dominated by its fp32 embedding table; a BERT-base-shaped encoder with a small
        # vocabulary is dominated by its linear weights, which is where an fp32 copy would show.
        base = os.path.join(tmp, "bert-base-shaped")
        BertModel(BertConfig(vocab_size=2048)).save_pretrained(base)
        for title, src in [("all-MiniLM-L6-v2 (bundled)", default_model_path()),
                           ("BERT-base-shaped encoder, 12 x 768, vocab 2048 (random weights)", base)]:
            packed = os.path.join(tmp, "packed-" + os.path.basename(src))
            AutoModel.from_pretrained(src, quantization_config=ternary_hf.TernaryConfig()).save_pretrained(packed)
            cases = [("fp32 checkpoint, plain load", src, False),
                     ("fp32 checkpoint, quantize on load", src, True),
                     ("packed ternary checkpoint", packed, False)]
            rows = [(name, run(path, q), ternary_hf.footprint(path)) for name, path, q in cases]
            report(title, rows)


def report(title: str, rows: list) -> None:
    mib = 2**20
    print(f"\nLoading {title} (fresh process each; growth over the RSS after imports)\n")
    print("| load | checkpoint file | peak RSS growth | RSS after load | heap after load | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r, fp in rows:
        print(f"| {name} | {fp.file_bytes / mib:.1f} MiB | {r['peak_growth'] / mib:.1f} MiB | "
              f"{r['after_growth'] / mib:.1f} MiB | {r['anon_growth'] / mib:.1f} MiB | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
