"""Load time of the packed all-MiniLM-L6-v2 with and without the load-time integrity checks.

Saves the bundled MiniLM ternarized (packed safetensors) to a temp folder once, then loads it with
`AutoModel.from_pretrained` alternating A (checks on, the default) and B (checks replaced by a no-op),
A B A B ..., and prints the medians. Run: `python benchmarks/load_speed.py [--rounds 15] [--embedding-dtype float]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--embedding-dtype", default="float", choices=("float", "int8", "int4", "ternary"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModel

    import ternary_hf
    from ternary_hf import quantizer
    from ternary_hf.defaults import default_model_path

    torch.set_num_threads(1)
    checks = getattr(quantizer, "verify_checkpoint", None)
    with tempfile.TemporaryDirectory() as tmp:
        AutoModel.from_pretrained(default_model_path(), quantization_config=ternary_hf.TernaryConfig(
            embedding_dtype=args.embedding_dtype)).save_pretrained(tmp)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".safetensors"))
        AutoModel.from_pretrained(tmp)  # warm the page cache and the imports
        times: dict[str, list[float]] = {"checks on": [], "checks off": []}
        cpu: dict[str, list[float]] = {"checks on": [], "checks off": []}  # process CPU time: steadier on a busy host
        for _ in range(args.rounds):
            for arm in times:
                if checks is not None:
                    quantizer.verify_checkpoint = checks if arm == "checks on" else (lambda files: None)
                t0, c0 = time.perf_counter(), time.process_time()
                AutoModel.from_pretrained(tmp)
                times[arm].append(time.perf_counter() - t0)
                cpu[arm].append(time.process_time() - c0)
        verify_ms = []
        if checks is not None:
            quantizer.verify_checkpoint = checks
            files = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".safetensors")]
            for _ in range(4 * args.rounds):
                t0 = time.perf_counter()
                checks(files)
                verify_ms.append(1000 * (time.perf_counter() - t0))
    print(f"packed all-MiniLM-L6-v2 (embedding_dtype={args.embedding_dtype}), {size / 2**20:.1f} MiB of safetensors, "
          f"{args.rounds} alternated rounds, 1 thread" + ("" if checks is not None else " (no checks in this version)"))
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print("| arm | median load s (wall) | min | max | median CPU s |\n|---|---:|---:|---:|---:|")
    for arm, values in times.items():
        print(f"| {arm} | {statistics.median(values):.4f} | {min(values):.4f} | {max(values):.4f} | "
              f"{statistics.median(cpu[arm]):.4f} |")
    on, off = (statistics.median(v) for v in times.values())
    cpu_on, cpu_off = (statistics.median(v) for v in cpu.values())
    print(f"\nchecks cost (difference of the medians): wall {1000 * (on - off):+.1f} ms ({100 * (on / off - 1):+.1f}%), "
          f"CPU {1000 * (cpu_on - cpu_off):+.1f} ms ({100 * (cpu_on / cpu_off - 1):+.1f}%)")
    if verify_ms:
        print(f"verify_checkpoint alone (hashes + codes + scales of every tensor): median "
              f"{statistics.median(verify_ms):.2f} ms, min {min(verify_ms):.2f} ms over {len(verify_ms)} runs "
              f"= {100 * statistics.median(verify_ms) / 1000 / off:.1f}% of the median load without checks")


if __name__ == "__main__":
    main()
