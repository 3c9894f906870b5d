"""make_triplets: each split's papers -> training/evaluation pairs and triplets, within that split.

Per split (seeded by shared.seed and the split's name, so one split's counts never move another's):
- triplets: (anchor, positive, negative) abstracts; anchor and positive share the label, the
  negative has another one: `hard` (same archive, other primary category) for a
  make_triplets.hard_negative_fraction share where such a paper exists, else `random`;
- title_abstract: every paper's title -> its own abstract;
- same_label: abstract -> abstract of another paper with the same label.
Anchor labels are taken round-robin (balanced across labels, not proportional to their size).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import atomic_path, write_json
from arxiv_embed.params import load_params
from arxiv_embed.errors import run

SPLIT_SEED = {split: i for i, split in enumerate(paths.SPLITS)}
PAIR_SCHEMA = {"anchor": pl.String, "positive": pl.String, "anchor_id": pl.String, "positive_id": pl.String, "label": pl.String}
TRIPLET_SCHEMA = {
    "anchor": pl.String, "positive": pl.String, "negative": pl.String, "anchor_id": pl.String, "positive_id": pl.String,
    "negative_id": pl.String, "label": pl.String, "negative_label": pl.String, "negative_type": pl.String,
}  # fmt: skip


def anchor_positive_pairs(papers: pl.DataFrame, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n (anchor, positive) row pairs of one label each, labels round-robin in a shuffled order.

    Labels with a single paper cannot give a pair and are left out (make_triplets reports them).
    """
    members = papers.with_row_index("row").group_by("label").agg("row").filter(pl.col("row").list.len() > 1).sort("label")
    if n == 0 or members.is_empty():
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    groups = [np.asarray(rows) for rows in members["row"]]
    turn = np.resize(rng.permutation(len(groups)), n)
    anchors, positives = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for g, rows in enumerate(groups):
        at = np.flatnonzero(turn == g)
        first = rng.integers(len(rows), size=len(at))
        second = rng.integers(len(rows) - 1, size=len(at))
        second += second >= first  # a different paper of the same label, never the anchor itself
        anchors[at], positives[at] = rows[first], rows[second]
    return anchors, positives


def negatives(papers: pl.DataFrame, anchors: np.ndarray, hard_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A negative row per anchor (another label); `hard` ones share the anchor's archive but not
    its primary category. Falls back to `random` where no hard candidate exists."""
    # Integer codes: comparing millions of strings per group would be slow.
    codes = papers.select(pl.col("label", "archive", "primary_category").rank("dense"))
    label, archive, primary = (codes[c].to_numpy() for c in codes.columns)
    want_hard = rng.permutation(len(anchors)) < round(hard_fraction * len(anchors))
    chosen, kinds = np.full(len(anchors), -1, dtype=np.int64), np.array(["random"] * len(anchors), dtype=object)
    keys = pl.DataFrame({"label": label[anchors], "archive": archive[anchors], "primary": primary[anchors], "hard": want_hard})
    for (lab, arc, pri, hard), group in keys.with_row_index("at").group_by("label", "archive", "primary", "hard", maintain_order=True):
        at = group["at"].to_numpy()
        other = label != lab
        candidates = np.flatnonzero(other & (archive == arc) & (primary != pri)) if hard else np.empty(0, dtype=np.int64)
        if len(candidates):
            kinds[at] = "hard"
        else:
            candidates = np.flatnonzero(other)
        if len(candidates):
            chosen[at] = rng.choice(candidates, size=len(at))
    return chosen, list(kinds)


def build(papers: pl.DataFrame, n_triplets: int, n_pairs: int, hard_fraction: float, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """All three kinds for one split."""
    anchor, positive = anchor_positive_pairs(papers, n_triplets, rng)
    negative, kinds = negatives(papers, anchor, hard_fraction, rng)
    keep = negative >= 0  # a split with a single label has no negative to offer
    anchor, positive, negative, kinds = anchor[keep], positive[keep], negative[keep], np.asarray(kinds, dtype=object)[keep]
    take = papers.select("abstract", "id", "label")
    triplets = pl.DataFrame(
        {
            "anchor": take["abstract"].gather(anchor), "positive": take["abstract"].gather(positive),
            "negative": take["abstract"].gather(negative), "anchor_id": take["id"].gather(anchor),
            "positive_id": take["id"].gather(positive), "negative_id": take["id"].gather(negative),
            "label": take["label"].gather(anchor), "negative_label": take["label"].gather(negative),
            "negative_type": pl.Series(list(kinds), dtype=pl.String),
        },
        schema=TRIPLET_SCHEMA,
    )  # fmt: skip
    a, p = anchor_positive_pairs(papers, n_pairs, rng)
    same_label = pl.DataFrame(
        {"anchor": take["abstract"].gather(a), "positive": take["abstract"].gather(p), "anchor_id": take["id"].gather(a),
         "positive_id": take["id"].gather(p), "label": take["label"].gather(a)},
        schema=PAIR_SCHEMA,
    )  # fmt: skip
    title_abstract = papers.select(anchor="title", positive="abstract", id="id", label="label")
    return {"triplets": triplets, "title_abstract": title_abstract, "same_label": same_label}


def main() -> None:
    params = load_params()
    cfg = params.make_triplets
    metrics: dict[str, object] = {"hard_negative_fraction": cfg.hard_negative_fraction}
    with atomic_path(paths.TRIPLETS_DIR) as out:
        out.mkdir()
        for split in paths.SPLITS:
            columns = ["id", "title", "abstract", "label", "archive", "primary_category"]
            papers = pl.read_parquet(paths.split_file(split), columns=columns)
            rng = np.random.default_rng([params.shared.seed, SPLIT_SEED[split]])
            n_triplets = getattr(cfg.triplets_per_split, split)
            kinds = build(papers, n_triplets, getattr(cfg.same_label_pairs_per_split, split), cfg.hard_negative_fraction, rng)
            for kind, frame in kinds.items():
                frame.write_parquet(out / paths.training_file(split, kind).name)
            sizes = papers["label"].value_counts()
            single = sizes.filter(pl.col("count") == 1)["label"].sort().to_list()
            types = kinds["triplets"]["negative_type"]
            metrics[split] = {
                "papers": papers.height,
                "labels": sizes.height,
                "single_paper_labels": len(single),
                **{kind: frame.height for kind, frame in kinds.items()},
                "hard_negatives": int((types == "hard").sum()),
                "random_negatives": int((types == "random").sum()),
                "hard_requested": round(cfg.hard_negative_fraction * kinds["triplets"].height),
            }
            print(f"make_triplets {split}: " + ", ".join(f"{k} {v}" for k, v in metrics[split].items()))
            if single:
                print(f"  labels with one paper (no anchor/positive pair): {', '.join(single)}")
            if kinds["triplets"].height < n_triplets:
                print(f"  only {kinds['triplets'].height} of {n_triplets} triplets: too few labels with 2+ papers in {split}")
    write_json(paths.metrics_file("make_triplets"), metrics)


if __name__ == "__main__":
    run(main, "make_triplets")
