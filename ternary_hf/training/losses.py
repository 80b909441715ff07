"""Distillation loss terms: student (ternary) outputs against teacher (full-precision) outputs.

Every term is computed over *real* tokens only: padding positions carry no meaning, and averaging
over them (as the source paper did) lets the padding-heavy short sentences of a batch dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens of `[batch, seq, dim]` tensors (`mask` is `[batch, seq]`)."""
    # fp32 arithmetic: under bf16 autocast the hidden states arrive in bf16, whose 8-bit mantissa would
    # round away the small residuals the student is being trained to close.
    student = student.float()
    m = mask.to(student.dtype).unsqueeze(-1)
    n = (m.sum() * student.shape[-1]).clamp(min=1.0)
    return ((student - teacher.float()) ** 2 * m).sum() / n


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of `1 - cos(student_i, teacher_i)` over the batch of `[batch, dim]` embeddings."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between in-batch neighbour distributions: for every embedding, the softmax over the
    other embeddings of the batch of cosine / temperature. It trains the order of neighbours (what retrieval
    reads) rather than each embedding's position on its own. `[batch, dim]`; 0 for a batch of one."""
    b = student.shape[0]
    if b < 2:
        return student.new_zeros((), dtype=torch.float32)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    self_pair = torch.eye(b, dtype=torch.bool, device=s.device)
    s_logits = (s @ s.T / temperature).masked_fill(self_pair, float("-inf"))
    t_logits = (t @ t.T / temperature).masked_fill(self_pair, float("-inf"))
    t_prob = t_logits.softmax(-1)
    kl = t_prob * (t_logits.log_softmax(-1) - s_logits.log_softmax(-1))
    return kl.masked_fill(self_pair, 0.0).sum(-1).mean()


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions `[batch, heads, q, k]`, averaged over the
    heads and the real query tokens (TernaryBERT's attention-score distillation, on probabilities)."""
    eps = 1e-8
    student = student.float()
    t = teacher.float()
    kl = (t * ((t + eps).log() - (student + eps).log())).sum(-1)  # [batch, heads, q]
    m = mask.to(student.dtype).unsqueeze(1)  # [batch, 1, q]
    return (kl * m).sum() / (m.sum() * student.shape[1]).clamp(min=1.0)


@dataclass
class LossWeights:
    """Weights of the distillation terms (0 disables a term; its teacher outputs are then not needed)."""

    hidden_mse: float = 1.0
    cosine: float = 1.0
    intermediate_mse: float = 0.0
    attention_kl: float = 0.0
    relational_kl: float = 0.0
    relational_temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("hidden_mse", "cosine", "intermediate_mse", "attention_kl", "relational_kl"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"loss weight {name} must be a number >= 0, got {value!r}.")
        if not isinstance(self.relational_temperature, (int, float)) or not self.relational_temperature > 0:
            raise ValueError(f"relational_temperature must be a number > 0, got {self.relational_temperature!r}.")
        if self.hidden_mse == self.cosine == self.intermediate_mse == self.attention_kl == self.relational_kl == 0:
            raise ValueError("all distillation loss weights are 0: nothing to train on; set at least one > 0.")


class DistillationLoss(nn.Module):
    """Combines the distillation terms.

    Inputs are dicts of tensors (only the keys the enabled terms need):
      `last_hidden_state [b, s, d]`, `sentence_embedding [b, d]` (pooled, before normalisation),
      `hidden_states` (tuple of `[b, s, d]`, embeddings output first), `attentions` (tuple of `[b, h, s, s]`).
    `intermediate_layers` selects entries of `hidden_states` (None: every layer but the last, which the
    `hidden_mse` term already covers).
    """

    def __init__(self, weights: LossWeights, intermediate_layers: list[int] | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.intermediate_layers = intermediate_layers

    @property
    def needs_hidden_states(self) -> bool:
        return self.weights.intermediate_mse > 0

    @property
    def needs_attentions(self) -> bool:
        return self.weights.attention_kl > 0

    def forward(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return `(total, {term: unweighted value})`."""
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if w.hidden_mse > 0:
            terms["hidden_mse"] = masked_mse(student["last_hidden_state"], teacher["last_hidden_state"], mask)
        if w.cosine > 0:
            terms["cosine"] = cosine_distance(student["sentence_embedding"], teacher["sentence_embedding"])
        if w.relational_kl > 0:
            terms["relational_kl"] = relational_kl(student["sentence_embedding"], teacher["sentence_embedding"],
                                                   w.relational_temperature)
        if w.intermediate_mse > 0:
            s_hs, t_hs = student["hidden_states"], teacher["hidden_states"]
            layers = self.intermediate_layers
            if layers is None:
                layers = list(range(1, len(s_hs) - 1))
            if not layers:  # a one-layer model has no intermediate layer
                terms["intermediate_mse"] = s_hs[-1].new_zeros(())
            else:
                terms["intermediate_mse"] = torch.stack([masked_mse(s_hs[i], t_hs[i], mask) for i in layers]).mean()
        if w.attention_kl > 0:
            s_at, t_at = student["attentions"], teacher["attentions"]
            terms["attention_kl"] = torch.stack([attention_kl(s, t, mask) for s, t in zip(s_at, t_at)]).mean()
        total = sum(getattr(w, name) * value for name, value in terms.items())
        return total, terms
