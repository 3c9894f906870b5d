"""Label-aware losses sentence-transformers does not ship, with its loss interface.

`SupervisedContrastiveLoss` is multi-positive InfoNCE over a batch (Khosla et al., 2020, "SupCon"):
each abstract is pulled toward EVERY other abstract of its label in the batch and pushed from the
rest, through a softmax over cosine similarities / temperature. Unlike the batch-triplet losses
(a hinge that stops once a margin holds), every pair keeps a gradient proportional to how much it
is confused, which tightens labels into the compact, separable clusters a linear classifier needs
(issue 21: macro-F1 fell under BatchAll). Batches come from the label-grouping sampler, as for
batch_all: several papers of each of several labels.

Like the library's losses it is `forward(sentence_features, labels)` on a model, and
`compute_loss_from_embeddings(embeddings, labels)` for the adapter's cached vectors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SupervisedContrastiveLoss(nn.Module):
    def __init__(self, model: Any, temperature: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Mean over anchors with at least one same-label partner of -mean log p(partner | anchor),
        p a softmax over the anchor's similarities to every other text of the batch."""
        x = F.normalize(embeddings[0], dim=-1)
        scores = x @ x.T / self.temperature
        itself = torch.eye(len(x), dtype=torch.bool, device=x.device)
        scores = scores.masked_fill(itself, float("-inf"))  # an abstract is not its own positive or negative
        log_p = scores - torch.logsumexp(scores, dim=1, keepdim=True)
        positives = (labels[:, None] == labels[None, :]) & ~itself
        counts = positives.sum(1)
        has = counts > 0
        if not has.any():
            return x.sum() * 0.0  # a batch of singletons teaches nothing (the grouping sampler prevents it)
        per_anchor = -log_p.masked_fill(~positives, 0.0).sum(1)[has] / counts[has]
        return per_anchor.mean()

    @property
    def citation(self) -> str:
        return "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020 (arXiv:2004.11362)"
