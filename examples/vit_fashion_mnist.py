"""A ternary ViT image encoder, end to end and offline, on real images (Fashion-MNIST from Debian's
`dataset-fashion-mnist`: 60k train / 10k test, 28x28 grey):

1. train a small ViT classifier in fp32 (no pretrained ViT can be fetched here) and keep its encoder;
2. PTQ: ternarize the encoder on load (`TernaryConfig`, packed 2-bit weights);
3. self-distil a ternary student from the frozen fp32 encoder with `TernaryDistillationTrainer` on the
   training images (pixel inputs, no tokenizer, no labels), save it packed and reload it;
4. score the frozen encoders as the source paper scores its ternary ViT: linear-probe accuracy (a logistic
   regression on pooled CLS embeddings of training images, tested on the test set) and k-NN accuracy,
   plus the footprint of each checkpoint.

    sudo apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 10 python examples/vit_fashion_mnist.py
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 10 python examples/vit_fashion_mnist.py --fast   # smoke run

Measured on this machine (2 shared CPU cores, one thread, load average 5-7 from other jobs): the default
run took 7 min (425 s: fp32 training 286 s, distillation 90 s) and the --fast run 42 s; at load average
~10, a run with half the fp32 steps took 18 min. One thread is the robust choice on a shared machine: with two
threads and other jobs running, torch's threads wait on each other and every step gets slower.
Prints the table and the run time of each stage; everything is written under --output-dir.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from transformers import (AutoModel, Trainer, TrainingArguments, ViTConfig, ViTForImageClassification,
                          ViTImageProcessor, ViTModel)

import ternary_hf
from ternary_hf.evaluation.fidelity import paired_cosine
from ternary_hf.evaluation.vision import encode_images, knn_accuracy, linear_probe_accuracy
from ternary_hf.footprint import footprint
from ternary_hf.training import DistillationArguments, TernaryDistillationTrainer

DATA_DIR = "/usr/share/datasets/fashion-mnist"
# Training-set pixel statistics of Fashion-MNIST (on the 0-1 scale).
MEAN, STD = 0.2860, 0.3530


def read_idx(path: str) -> np.ndarray:
    """An idx file (the MNIST format: big-endian dims after a magic number) as a uint8 array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: install Debian's dataset-fashion-mnist (apt-get install "
                                "dataset-fashion-mnist) or pass --data-dir.")
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir: str, split: str, processor: ViTImageProcessor) -> tuple[torch.Tensor, np.ndarray]:
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")).astype(np.int64)
    # The saved image processor's own transform (rescale + normalise), applied to the whole array at once.
    pixels = processor.normalize(processor.rescale(images[:, None].astype(np.float32), processor.rescale_factor,
                                                   input_data_format="channels_first"),
                                 processor.image_mean, processor.image_std, input_data_format="channels_first")
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)), labels


class LabelledImages(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels: np.ndarray) -> None:
        self.pixels, self.labels = pixels, torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def train_fp32(args, train_x, train_y, out_dir: str) -> None:
    config = ViTConfig(image_size=28, patch_size=args.patch, num_channels=1, hidden_size=args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       intermediate_size=2 * args.hidden, num_labels=10, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    torch.manual_seed(args.seed)
    model = ViTForImageClassification(config)
    targs = TrainingArguments(
        output_dir=os.path.join(out_dir, "run"), max_steps=args.train_steps, per_device_train_batch_size=args.batch,
        learning_rate=args.train_lr, weight_decay=0.05, warmup_steps=max(1, args.train_steps // 20),
        lr_scheduler_type="cosine", logging_steps=max(1, args.train_steps // 10), save_strategy="no",
        report_to="none", seed=args.seed, use_cpu=True, dataloader_pin_memory=False, disable_tqdm=args.quiet)
    Trainer(model=model, args=targs, train_dataset=LabelledImages(train_x, train_y)).train()
    model.save_pretrained(out_dir)


def distil(args, fp32_dir: str, teacher: ViTModel, train_x: torch.Tensor, out_dir: str) -> list[dict]:
    student = ViTModel.from_pretrained(fp32_dir, add_pooling_layer=False,
                                       quantization_config=ternary_hf.TernaryConfig(mode="qat"))
    targs = TrainingArguments(
        output_dir=os.path.join(out_dir, "checkpoints"), max_steps=args.distill_steps,
        per_device_train_batch_size=args.batch, learning_rate=args.distill_lr,
        warmup_steps=max(1, args.distill_steps // 20), lr_scheduler_type="cosine",
        logging_steps=max(1, args.distill_steps // 10), save_strategy="no", report_to="none", seed=args.seed,
        use_cpu=True, dataloader_pin_memory=False, disable_tqdm=args.quiet)
    dargs = DistillationArguments(pooling="cls", hidden_mse_weight=1.0, cosine_weight=1.0,
                                  intermediate_mse_weight=1.0)
    # The training images as pixel_values; labels are not used.
    trainer = TernaryDistillationTrainer(model=student, args=targs, train_dataset=train_x, teacher=teacher,
                                         distillation_args=dargs)
    trainer.train()
    trainer.save_model(out_dir)
    return [h for h in trainer.state.log_history if "loss" in h]


def score(model, probe_x, probe_y, test_x, test_y, batch: int, reference: np.ndarray | None = None) -> dict:
    """Linear-probe and k-NN accuracy of the frozen CLS embeddings; with `reference` (the fp32 encoder's test
    embeddings), also their mean cosine to it: how closely the ternary encoder reproduces the fp32 features."""
    train_f = encode_images(model, probe_x, pooling="cls", batch_size=batch)
    test_f = encode_images(model, test_x, pooling="cls", batch_size=batch)
    ref = test_f if reference is None else reference
    return {"probe": linear_probe_accuracy(train_f, probe_y, test_f, test_y),
            "knn": knn_accuracy(train_f, probe_y, test_f, test_y, k=10),
            "cos": float(paired_cosine(test_f, ref).mean()), "test_features": test_f}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--output-dir", default="out/vit-fashion-mnist")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=1600, help="fp32 classification steps")
    parser.add_argument("--train-lr", type=float, default=1e-3)
    parser.add_argument("--distill-steps", type=int, default=300, help="ternary self-distillation steps")
    parser.add_argument("--distill-lr", type=float, default=1e-3)
    parser.add_argument("--probe-train", type=int, default=10000, help="training images the probes are fitted on")
    parser.add_argument("--test", type=int, default=10000, help="test images scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-fp32", action="store_true",
                        help="skip fp32 training when --output-dir already holds fp32/ (to try distillation settings)")
    parser.add_argument("--fast", action="store_true", help="smoke run: few steps, small probe sets")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.fast:
        args.train_steps, args.distill_steps, args.probe_train, args.test = 100, 40, 2000, 2000
    started = time.perf_counter()
    times: dict[str, float] = {}

    fp32_dir, ptq_dir, distilled_dir = (os.path.join(args.output_dir, n) for n in ("fp32", "ptq", "distilled"))
    processor = ViTImageProcessor(do_resize=False, do_rescale=True, do_normalize=True, image_mean=[MEAN],
                                  image_std=[STD], do_convert_rgb=False)
    train_x, train_y = load_split(args.data_dir, "train", processor)
    test_x, test_y = load_split(args.data_dir, "t10k", processor)
    rng = np.random.default_rng(args.seed)
    probe_idx = torch.from_numpy(rng.permutation(len(train_y))[: args.probe_train])
    probe_x, probe_y = train_x[probe_idx], train_y[probe_idx.numpy()]
    test_x, test_y = test_x[: args.test], test_y[: args.test]

    t = time.perf_counter()
    if args.reuse_fp32 and os.path.isfile(os.path.join(fp32_dir, "config.json")):
        print(f"reusing the fp32 model in {fp32_dir}")
    else:
        train_fp32(args, train_x, train_y, fp32_dir)
        processor.save_pretrained(fp32_dir)
    times["fp32 training"] = time.perf_counter() - t

    rows = []
    t = time.perf_counter()
    teacher = ViTModel.from_pretrained(fp32_dir, add_pooling_layer=False).eval()
    clf = ViTForImageClassification.from_pretrained(fp32_dir).eval()
    with torch.no_grad():
        head_acc = float(np.mean([(clf(pixel_values=test_x[i:i + 500]).logits.argmax(-1).numpy() ==
                                   test_y[i:i + 500]).mean() for i in range(0, len(test_y), 500)]))
    rows.append(("fp32", score(teacher, probe_x, probe_y, test_x, test_y, args.batch), footprint(teacher)))
    reference = rows[0][1]["test_features"]
    times["fp32 scoring"] = time.perf_counter() - t

    t = time.perf_counter()
    ptq = ViTModel.from_pretrained(fp32_dir, add_pooling_layer=False, quantization_config=ternary_hf.TernaryConfig())
    ptq.save_pretrained(ptq_dir)
    ptq = AutoModel.from_pretrained(ptq_dir)
    rows.append(("ternary PTQ", score(ptq, probe_x, probe_y, test_x, test_y, args.batch, reference),
                 footprint(ptq_dir)))
    times["PTQ + scoring"] = time.perf_counter() - t

    t = time.perf_counter()
    logs = distil(args, fp32_dir, teacher, train_x, distilled_dir)
    processor.save_pretrained(distilled_dir)
    times["distillation"] = time.perf_counter() - t
    t = time.perf_counter()
    distilled = AutoModel.from_pretrained(distilled_dir)  # the packed checkpoint, as a user would load it
    rows.append(("ternary distilled", score(distilled, probe_x, probe_y, test_x, test_y, args.batch, reference),
                 footprint(distilled_dir)))
    times["distilled scoring"] = time.perf_counter() - t

    base = rows[0][1]["probe"]
    print(f"\nViT (image 28, patch {args.patch}, hidden {args.hidden}, {args.layers} layers) on Fashion-MNIST; "
          f"fp32 classifier head test accuracy {head_acc:.4f}; probes fitted on {len(probe_y)} training images, "
          f"scored on {len(test_y)} test images; CLS pooling.")
    print(f"distillation: {args.distill_steps} steps x {args.batch} images, loss {logs[0]['loss']:.4f} -> "
          f"{logs[-1]['loss']:.4f}\n")
    print("| encoder | linear probe | retained | k-NN (k=10) | cos to fp32 | weights | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s, fp in rows:
        print(f"| {name} | {s['probe']:.4f} | {s['probe'] / base:.1%} | {s['knn']:.4f} | {s['cos']:.4f} | "
              f"{fp.total / 2**20:.2f} MiB | {fp.ratio:.3f}x |")
    print("\n" + "  ".join(f"{k}: {v:.0f}s" for k, v in times.items()))
    print(f"total wall time: {time.perf_counter() - started:.0f} s ({torch.get_num_threads()} threads; "
          f"load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
