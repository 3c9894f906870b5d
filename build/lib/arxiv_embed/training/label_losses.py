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


PROTOTYPE_MOMENTUM = 0.9  # each label's prototype: moving average of its papers' embeddings over batches


class SupervisedContrastiveLoss(nn.Module):
    """SupCon over the batch, plus (prototype_weight > 0) a prototype head: cross-entropy of each
    abstract's cosine similarity / temperature to EVERY label's prototype (a moving average of that
    label's embeddings, no parameters to learn). The batch term sees only the labels in the batch;
    the head pushes each abstract from all other labels at once, which is what a linear classifier's
    decision boundaries need. prototype_margin > 0 takes that much off the cosine to the abstract's own
    prototype (an additive margin, CosFace: Wang et al., 2018, arXiv:1801.09414): the head is satisfied
    only once an abstract is nearer its own label than every other by the margin, which tightens labels further."""

    def __init__(self, model: Any, temperature: float = 0.1, prototype_weight: float = 0.0, prototype_margin: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.prototype_weight = prototype_weight
        self.prototype_margin = prototype_margin
        self.reset()

    def reset(self) -> None:
        """Forget every prototype: a training run starts with none (the adapter's members and a benchmark's
        seeds reuse one recipe, and another run's prototypes live in another run's embedding space)."""
        # Embedding width -> (prototypes, seen): MatryoshkaLoss calls the loss once per width, each with its own head.
        self.heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def prototypes_of(self, width: int) -> torch.Tensor:
        return self.heads[width][0]

    def prototype_state(self) -> dict[int, dict[str, torch.Tensor]]:
        """The prototypes as plain tensors (width -> prototypes, seen): training state outside the model's weights,
        so a checkpoint must carry it for a resumed run to equal an uninterrupted one (training/trainer.py)."""
        return {width: {"prototypes": p.detach().cpu().clone(), "seen": s.cpu().clone()} for width, (p, s) in self.heads.items()}

    def load_prototype_state(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        """Replace the prototypes with `prototype_state()`'s; they move to the embeddings' device at their next use."""
        self.heads = {int(width): (head["prototypes"].clone(), head["seen"].clone()) for width, head in state.items()}

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss = self.contrastive(embeddings[0], labels)
        if self.prototype_weight:
            loss = loss + self.prototype_weight * self.prototype_head(F.normalize(embeddings[0], dim=-1), labels)
        return loss

    def prototype_head(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the prototypes of the labels seen so far; then this batch updates its labels' prototypes."""
        n, width = int(labels.max()) + 1, x.shape[1]
        prototypes, seen = self.heads.get(width, (x.new_zeros(0, width), torch.zeros(0, dtype=torch.bool, device=x.device)))
        prototypes, seen = prototypes.to(x.device), seen.to(x.device)  # loaded from a checkpoint on the CPU: a no-op after
        if prototypes.shape[0] < n:  # labels are ids 0..n-1: grow on first sight
            grown, grown_seen = x.new_zeros(n, width), torch.zeros(n, dtype=torch.bool, device=x.device)
            grown[: prototypes.shape[0]], grown_seen[: seen.shape[0]] = prototypes, seen
            prototypes, seen = grown, grown_seen
        self.heads[width] = (prototypes, seen)
        present = labels.unique()
        means = torch.stack([x[labels == label].mean(0) for label in present]).detach()
        fresh = ~seen[present]
        prototypes[present[fresh]] = means[fresh]  # a label seen for the first time starts at its batch mean
        seen[present] = True
        cosines = x @ F.normalize(prototypes, dim=-1).T
        if self.prototype_margin:
            cosines = cosines - self.prototype_margin * F.one_hot(labels, prototypes.shape[0]).to(cosines.dtype)
        logits = (cosines / self.temperature).masked_fill(~seen, float("-inf"))
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            old = present[~fresh]
            prototypes[old] = PROTOTYPE_MOMENTUM * prototypes[old] + (1 - PROTOTYPE_MOMENTUM) * means[~fresh]
        return loss

    def contrastive(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over anchors with at least one same-label partner of -mean log p(partner | anchor),
        p a softmax over the anchor's similarities to every other text of the batch."""
        x = F.normalize(embeddings, dim=-1)
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
