"""make_triplets' algorithm: one split's papers -> training/evaluation pairs and triplets, within that split.

- triplets: (anchor, positive, negative) abstracts; anchor and positive share the label, the
  negative has another one: `hard` (same archive, other primary category) for a
  hard_fraction share where such a paper exists, else `random`;
- title_abstract: every paper's title -> its own abstract;
- same_label: abstract -> abstract of another paper with the same label;
- graded_pairs: abstract pairs scored by arXiv's structure: same label 1.0 > a shared (cross-list)
  category 0.67 > same archive 0.33 > other 0.0 (grades drawn evenly; a grade without a candidate
  falls to the next lower one), and `same_label` 1/0, for CoSENT/AnglE/OnlineContrastive.
Anchor labels are taken round-robin (balanced across labels, not proportional to their size).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from arxiv_embed.progress import Progress


def resolve_count(count: int | float | str, papers: int) -> int:
    """A make_triplets count (params.Count): an integer as it is, a decimal per paper, "all" one per paper."""
    if count == "all":
        return papers
    if isinstance(count, float):
        return round(count * papers)
    return int(count)


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


GRADE_SCORES = (0.0, 0.33, 0.67, 1.0)  # other, same archive, shared category, same label
GRADED_SCHEMA = {"anchor": pl.String, "positive": pl.String, "anchor_id": pl.String, "positive_id": pl.String,
                 "score": pl.Float64, "same_label": pl.Int64}


DRAWS = 16  # candidates drawn per grade and pair


def _draw(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(pool, size=min(len(pool), DRAWS), replace=False)


def graded_partners(papers: pl.DataFrame, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n (anchor row, partner row, grade 0-3) with grades drawn evenly; no partner is its anchor."""
    if n == 0 or papers.height < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    rows = papers.with_row_index("row")
    by = {key: {k: np.asarray(v) for k, v in rows.group_by(key).agg("row").iter_rows()} for key in ("label", "archive")}
    by_category = {k: np.asarray(v) for k, v in rows.select("row", "categories").explode("categories").group_by("categories").agg("row").iter_rows()}
    label, archive, categories = papers["label"].to_list(), papers["archive"].to_list(), papers["categories"].to_list()
    # Grade 0's pool (every row outside the anchor's archive) is never built: an array over the whole
    # split per pair made this loop quadratic. gaps[arc] (the archive's sorted rows minus their rank)
    # maps a position in that pool to its row, so drawing positions draws the rows the pool would.
    gaps = {arc: np.sort(members) - np.arange(len(members)) for arc, members in by["archive"].items()}
    anchors, grades = rng.integers(papers.height, size=n), rng.integers(4, size=n)
    partners = np.full(n, -1, dtype=np.int64)
    meter = Progress("make_triplets: graded pairs", n, "pairs")
    for i, (a, grade) in enumerate(zip(anchors, grades)):
        meter.update()
        for g in range(grade, -1, -1):
            # Take a few draws and keep the first that has exactly grade g (cheap even for big pools).
            if g == 3:
                draws = _draw(by["label"][label[a]], rng)
            elif g == 2:
                draws = _draw(np.concatenate([by_category[c] for c in categories[a]]), rng)
            elif g == 1:
                draws = _draw(by["archive"][archive[a]], rng)
            else:
                outside = papers.height - len(gaps[archive[a]])
                at = rng.choice(outside, size=min(outside, DRAWS), replace=False)  # the rng calls _draw would make
                draws = at + np.searchsorted(gaps[archive[a]], at, side="right")
            for candidate in draws:
                same_label, same_archive = label[candidate] == label[a], archive[candidate] == archive[a]
                shared = bool(set(categories[candidate]) & set(categories[a]))
                actual = 3 if same_label else 2 if shared else 1 if same_archive else 0
                if candidate != a and actual == g:
                    partners[i], grades[i] = candidate, g
                    break
            if partners[i] >= 0:
                break
    keep = partners >= 0
    return anchors[keep], partners[keep], grades[keep]


def build(papers: pl.DataFrame, n_triplets: int, n_pairs: int, hard_fraction: float, rng: np.random.Generator,
          n_graded: int = 0) -> dict[str, pl.DataFrame]:
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
    a, p, grade = graded_partners(papers, n_graded, rng)
    graded = pl.DataFrame(
        {"anchor": take["abstract"].gather(a), "positive": take["abstract"].gather(p), "anchor_id": take["id"].gather(a),
         "positive_id": take["id"].gather(p), "score": np.asarray(GRADE_SCORES)[grade], "same_label": (grade == 3).astype(np.int64)},
        schema=GRADED_SCHEMA,
    )  # fmt: skip
    return {"triplets": triplets, "title_abstract": title_abstract, "same_label": same_label, "graded_pairs": graded}
