"""The losses finetune can train with, and the batch sampler each needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arxiv_embed.params import Finetune
from arxiv_embed.errors import TrainingSetupError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch import nn


def build_loss(model: SentenceTransformer, finetune: Finetune) -> nn.Module:
    """The library loss for finetune.loss, wrapped in MatryoshkaLoss when finetune.matryoshka_dims is set."""
    from sentence_transformers.sentence_transformer import losses

    if finetune.loss == "triplet":
        loss = losses.TripletLoss(model)
    elif finetune.loss == "mnrl":
        # Pairs: in-batch negatives; triplets: the third column adds one hard negative per anchor.
        loss = losses.MultipleNegativesRankingLoss(model)
    elif finetune.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=finetune.mini_batch_size)
    else:
        loss = losses.BatchHardTripletLoss(model)
    if finetune.matryoshka_dims:
        dim = model.get_embedding_dimension()
        if dim and (too_big := [d for d in finetune.matryoshka_dims if d > dim]):
            raise TrainingSetupError(f"finetune.matryoshka_dims {too_big} exceed the model's embedding dimension {dim}")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(finetune.matryoshka_dims), reverse=True))
    return loss


def batch_sampler(finetune: Finetune) -> str:
    """In-batch-negative losses must not see a text twice in a batch (it would be its own negative);
    batch-hard losses need several papers of several labels in every batch."""
    from sentence_transformers.base.sampler import BatchSamplers

    return {
        "mnrl": BatchSamplers.NO_DUPLICATES,
        "cached_mnrl": BatchSamplers.NO_DUPLICATES,
        "batch_hard": BatchSamplers.GROUP_BY_LABEL,
        "triplet": BatchSamplers.BATCH_SAMPLER,
    }[finetune.loss]
