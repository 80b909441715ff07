"""Calibrated ternarization: choose each weight's code knowing the inputs the layer sees (GPTQ for ternary).

Plain ternarization (`ternarize.py`) rounds every weight on its own. Rounding errors of one row add up in
the layer's output, and inputs are correlated, so a rounding error of column j can be compensated by nudging
the not-yet-rounded columns. With `H = E[x x^T]` over calibration inputs (the Hessian of the layer's
squared output error), GPTQ rounds the columns one at a time and spreads each column's error over the
remaining ones through the Cholesky factor of `H^-1` (Frantar et al., 2022). Here the grid is ternary:
`{-s, 0, +s}` with `s` the rule's scale of the *original* weights (per row / group / tensor), so the result is
exactly what the ternary checkpoint stores: `ternarize(rule)` of the calibrated weight gives back its codes
and scale, and a QAT student started from it computes the calibrated ternary function from step 0.

Columns are visited in decreasing `H_jj` ("act order": the inputs that carry the most energy are rounded
first, while there is the most freedom left to compensate). Encoder layers are calibrated in order, each on
the inputs produced by the already-calibrated layers below it.

On the bundled all-MiniLM-L6-v2 (512 distillation texts) post-training fidelity goes from
mean cosine 0.553 / 0.373 (short / ~200-token texts, plain TWN) to 0.743 / 0.632.
"""

from __future__ import annotations

import copy
from typing import Iterable, NamedTuple

import torch
from torch import nn

from .ternarize import ternarize


class CalibratedWeight(NamedTuple):
    """One layer's calibration: the ternary weight, and a continuous latent weight that rounds to its codes."""

    weight: torch.Tensor  # scale * codes, float32 [out, in]
    latent: torch.Tensor  # float32 [out, in]; `ternarize(latent, rule)` has the codes of `weight`


@torch.no_grad()
def gptq_ternary_weight(weight: torch.Tensor, hessian: torch.Tensor, rule: str = "twn",
                        granularity: str = "per_channel", group_size: int = 128, damp: float = 0.01,
                        act_order: bool = True, return_compensated: bool = False):
    """The calibrated ternary weight `scale * codes` (float32, `[out, in]`) of a float `weight` whose inputs have
    second-moment matrix `hessian` (`[in, in]`, e.g. `X^T X / n`). `damp` adds that fraction of the mean
    diagonal to the diagonal (numerical safety for rank-deficient inputs). With `return_compensated`, also the
    float weights as they were when each column was rounded (the original plus the propagated corrections):
    continuous values that round to the calibrated codes, a natural latent weight for QAT."""
    w = weight.detach().float().clone()
    out_f, in_f = w.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({in_f}, {in_f}) for this weight")
    _, scale = ternarize(w, rule, granularity, group_size)
    if granularity == "per_group":
        col_scale = scale.float().repeat_interleave(group_size, dim=1)  # [out, in]
    else:
        col_scale = scale.float().reshape(-1, 1).expand(out_f, in_f)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) <= 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_f)
    w, col_scale, h = w[:, order], col_scale[:, order].contiguous(), h[order][:, order]
    # upper Cholesky factor of H^-1: row i holds how column i's error propagates to the later columns
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.empty_like(w)
    compensated = torch.empty_like(w)
    block = 128
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        wb, err = w[:, i1:i2].clone(), torch.empty(out_f, i2 - i1)
        for i in range(i2 - i1):
            col, s = wb[:, i], col_scale[:, i1 + i]
            qc = torch.clamp(torch.round(col / s), -1, 1) * s
            q[:, i1 + i] = qc
            compensated[:, i1 + i] = col
            e = (col - qc) / u[i1 + i, i1 + i]
            wb[:, i + 1:] -= e[:, None] * u[i1 + i, i1 + i + 1:i2][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    inverse = torch.argsort(order)
    if return_compensated:
        return q[:, inverse], compensated[:, inverse]
    return q[:, inverse]


@torch.no_grad()
def latent_for_codes(target: torch.Tensor, start: torch.Tensor, rule: str = "twn", granularity: str = "per_channel",
                     group_size: int = 128, rounds: int = 8) -> torch.Tensor:
    """A float weight close to `start` whose ternarization under `rule` gives the codes of `target` (a
    `scale * codes` weight): entries the rule would round differently are moved just across the threshold.
    Thresholds depend on the row's mean magnitude, so a few rounds settle the moves."""
    want = torch.sign(target)
    latent = start.detach().float().clone()
    for _ in range(rounds):
        codes, _ = ternarize(latent, rule, granularity, group_size)
        wrong = codes != want
        if not wrong.any():
            break
        if granularity == "per_group":
            mag = latent.abs().reshape(latent.shape[0], -1, group_size).mean(-1).repeat_interleave(group_size, dim=1)
        elif granularity == "per_channel":
            mag = latent.abs().mean(dim=1, keepdim=True).expand_as(latent)
        else:
            mag = latent.abs().mean().expand_as(latent)
        # every rule keeps |w| above ~0.5-0.7 x the mean magnitude and drops it below: aim clear of both
        fix = torch.where(want != 0, want * torch.maximum(latent.abs(), 1.2 * mag), torch.sign(latent) * 0.3 * mag)
        latent = torch.where(wrong, fix, latent)
    return latent


def shared_rule(layers: dict[str, nn.Module]) -> dict[str, object]:
    """`{rule, granularity, group_size}` of `TernaryLinear` layers that must all use the same grid."""
    kinds = {(m.rule, m.granularity, m.group_size) for m in layers.values()}
    if len(kinds) != 1:
        raise ValueError(f"calibration needs one ternarization rule for all layers, the model mixes {sorted(kinds)}")
    rule, granularity, group_size = kinds.pop()
    return {"rule": rule, "granularity": granularity, "group_size": group_size}


def _encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's stack of transformer blocks (encoder.layer, layers, h, blocks), or the whole model."""
    for path in ("encoder.layer", "encoder.layers", "layers", "h", "blocks", "transformer.layer"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return list(obj)
    return [model]


@torch.no_grad()
def calibrate_linear_weights(model: nn.Module, names: Iterable[str], batches: list[dict[str, torch.Tensor]],
                             rule: str = "twn", granularity: str = "per_channel", group_size: int = 128,
                             damp: float = 0.01, act_order: bool = True) -> dict[str, CalibratedWeight]:
    """Calibrate the `nn.Linear` modules `names` of the float `model` (not modified: a copy is calibrated
    block by block). `batches` are model-input dicts; an `attention_mask` in them selects the real tokens.
    Per layer: the ternary weight `scale * codes`, and as QAT start a continuous latent weight that the rule
    rounds to the same codes (`latent_for_codes` of the compensated weights: its values sit around the
    thresholds as trained weights do, not on the grid)."""
    names = set(names)
    work = copy.deepcopy(model).float().eval()
    modules = dict(work.named_modules())
    missing = sorted(n for n in names if not isinstance(modules.get(n), nn.Linear))
    if missing:
        raise ValueError(f"calibration: these modules are not nn.Linear layers of the model: {missing[:5]}")
    if not batches:
        raise ValueError("calibration needs at least one batch of inputs")
    result: dict[str, CalibratedWeight] = {}
    for block in _encoder_blocks(work):
        block_names = [n for n, m in work.named_modules() if n in names and any(m is b for b in block.modules())]
        if not block_names:
            continue
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        token_mask: list[torch.Tensor | None] = [None]

        def hook(module, args, output, name):
            x = args[0].detach()
            mask = token_mask[0]
            x = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            x = x.double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in block_names]
        try:
            for batch in batches:
                mask = batch.get("attention_mask")
                token_mask[0] = mask.bool() if mask is not None else None
                work(**batch)
        finally:
            for h in handles:
                h.remove()
        for n in block_names:
            if n not in sums:
                continue  # not reached by these inputs: keep the plain rule
            lin = modules[n]
            q, compensated = gptq_ternary_weight(lin.weight, (sums[n] / counts[n]).float(), rule, granularity,
                                                 group_size, damp, act_order, return_compensated=True)
            lin.weight.copy_(q.to(lin.weight.dtype))  # later blocks see the calibrated layers' outputs
            result[n] = CalibratedWeight(q, latent_for_codes(q, compensated, rule, granularity, group_size))
    return result


@torch.no_grad()
def calibrate_ternary_model(ternary: nn.Module, float_model: nn.Module, tokenizer, texts: list[str],
                            batch_size: int = 32, max_length: int = 128, damp: float = 0.01) -> int:
    """Post-training: give every packed `TernaryLinear` of `ternary` the codes calibrated on `texts` through
    `float_model` (the same architecture in full precision, e.g. the checkpoint it was ternarized from).
    Returns the number of layers recalibrated."""
    from .integration import ternary_modules

    if not texts:
        raise ValueError("calibration needs texts: got none")
    layers = {n: m for n, m in ternary_modules(ternary) if m.is_packed}
    if not layers:
        raise ValueError("calibration: the model has no packed TernaryLinear layers")
    options = shared_rule(layers)
    device = next(float_model.parameters()).device
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append({k: v.to(device) for k, v in enc.items()})
    calibrated = calibrate_linear_weights(float_model, layers, batches, damp=damp, **options)
    for name, cal in calibrated.items():
        layers[name].load_float_weight(cal.weight.to(layers[name].weight_scale.dtype))
    return len(calibrated)
