"""make_triplets' algorithm: one split's papers -> training/evaluation pairs and triplets, within that split.

- triplets: (anchor, positive, negative) abstracts; anchor and positive share the label, the
  negative has another one: `hard` (same archive, other primary category) for a
  hard_fraction share where such a paper exists, else `random`;
- title_abstract: every paper's title -> its own abstract;
- same_label: abstract -> abstract of another paper with the same label;
- graded_pairs: abstract pairs scored by arXiv's structure: same label 1.0 > a shared (cross-list)
  category 0.67 > same archive 0.33 > other 0.0 (grades drawn evenly; a grade the anchor has no partner
  of falls to the next lower one), and `same_label` 1/0, for CoSENT/AnglE/OnlineContrastive.
Anchor labels are taken round-robin (balanced across labels, not proportional to their size). Split's `other` (rare
labels merged) is no shared label: never an anchor's label, nor same-label grade; its papers are negatives like any other.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from arxiv_embed.data.columns import OTHER
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

    Labels with a single paper cannot give a pair and are left out (make_triplets reports them), and so is split's
    `other` (rare labels merged): its papers share no subject, a math.GT paper is no positive for a nucl-ex one.
    """
    members = (papers.with_row_index("row").group_by("label").agg("row")
               .filter(pl.col("row").list.len() > 1, pl.col("label") != OTHER).sort("label"))
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
    """A negative row per anchor (another label, and not cross-listed in the anchor's); `hard` ones share the anchor's
    archive but not its primary category. Falls back to `random` where no hard candidate exists, and to any paper of
    another label where every one is cross-listed in the anchor's."""
    # Integer codes: comparing millions of strings per group would be slow.
    codes = papers.select(pl.col("label", "archive", "primary_category").rank("dense"))
    label, archive, primary = (codes[c].to_numpy() for c in codes.columns)
    crossed = cross_listed(papers, label)
    want_hard = rng.permutation(len(anchors)) < round(hard_fraction * len(anchors))
    chosen, kinds = np.full(len(anchors), -1, dtype=np.int64), np.array(["random"] * len(anchors), dtype=object)
    keys = pl.DataFrame({"label": label[anchors], "archive": archive[anchors], "primary": primary[anchors], "hard": want_hard})
    for (lab, arc, pri, hard), group in keys.with_row_index("at").group_by("label", "archive", "primary", "hard", maintain_order=True):
        at = group["at"].to_numpy()
        other = label != lab
        eligible = other.copy()
        eligible[crossed.get(lab, [])] = False
        candidates = np.flatnonzero(eligible & (archive == arc) & (primary != pri)) if hard else np.empty(0, dtype=np.int64)
        if len(candidates):
            kinds[at] = "hard"
        else:
            candidates = np.flatnonzero(eligible if eligible.any() else other)
        if len(candidates):
            chosen[at] = rng.choice(candidates, size=len(at))
    return chosen, list(kinds)


def cross_listed(papers: pl.DataFrame, label_codes: np.ndarray) -> dict[int, np.ndarray]:
    """label code -> the rows of another label listed in it: its categories name the label, or (shared.label archive)
    a category of it. Such a paper is no negative for the label: mining (training/mining.py) and the graded pairs'
    shared-category grade read it so too."""
    names = (papers.select("categories").with_row_index("row").explode("categories").drop_nulls()
             .select("row", name=pl.concat_list(pl.col("categories"), pl.col("categories").str.split(".").list.first()))
             .explode("name").unique(maintain_order=True))
    codes = pl.DataFrame({"name": papers["label"], "code": label_codes}).unique("name")
    rows = names.join(codes, on="name").group_by("code").agg("row")
    return {code: np.asarray(members, dtype=np.int64) for code, members in rows.iter_rows()}


GRADE_SCORES = (0.0, 0.33, 0.67, 1.0)  # other, same archive, shared category, same label
GRADED_SCHEMA = {"anchor": pl.String, "positive": pl.String, "anchor_id": pl.String, "positive_id": pl.String,
                 "score": pl.Float64, "same_label": pl.Int64}


DRAWS, ROUNDS = 16, 8  # grades 1 and 0: candidates drawn at a time, and how many times, before the grade falls


def _by_label(rows: pl.DataFrame, key: str) -> dict[object, tuple[np.ndarray, np.ndarray]]:
    """key value -> (its rows ordered by label code, their label codes): one label's rows are a slice."""
    grouped = rows.sort(key, "code", "row").group_by(key, maintain_order=True).agg("row", "code")
    return {value: (np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)) for value, r, c in grouped.iter_rows()}


def _other_labels(pool: tuple[np.ndarray, np.ndarray], code: int) -> tuple[np.ndarray, int, int]:
    """(rows, lo, hi): the pool's rows of label `code` are rows[lo:hi]; the others number len(rows) - (hi - lo)."""
    rows, codes = pool
    return rows, int(np.searchsorted(codes, code, "left")), int(np.searchsorted(codes, code, "right"))


def _skip(index: np.ndarray | int, lo: int, hi: int) -> np.ndarray | int:
    """An index into a pool with rows[lo:hi] left out, as an index into the whole pool."""
    return index + (index >= lo) * (hi - lo)


def graded_partners(papers: pl.DataFrame, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n (anchor row, partner row, grade 0-3) with grades drawn evenly; no partner is its anchor. A grade falls to
    the next lower one only when the anchor has no partner of it: grades 3 and 2 draw from exactly their
    candidates (a label's other papers; the papers of another label in any of the anchor's categories), so a
    category crowded by the anchor's own label cannot starve grade 2; grades 1 and 0 draw from the archive's other
    labels and from the other archives, up to DRAWS x ROUNDS times, for a paper that shares no category. Each draw
    costs the anchor's categories and DRAWS, never a whole pool: it scales to every train paper of the snapshot."""
    if n == 0 or papers.height < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    rows = papers.select("label", "archive", "categories").with_row_index("row").with_columns(
        pl.col("row").cast(pl.Int64), code=pl.col("label").rank("dense").cast(pl.Int64))
    code = rows["code"].to_numpy()
    by_label = {label: r for label, (r, _) in _by_label(rows, "label").items()}
    by_archive = _by_label(rows, "archive")
    by_category = _by_label(rows.explode("categories"), "categories")
    label, archive, categories = papers["label"].to_list(), papers["archive"].to_list(), papers["categories"].to_list()
    # Grade 0's pool (every row outside the anchor's archive) is never built: gaps[arc] (the archive's sorted rows
    # minus their rank) maps a position in that pool to its row.
    gaps = {arc: np.sort(members) - np.arange(len(members)) for arc, (members, _) in by_archive.items()}
    anchors, grades = rng.integers(papers.height, size=n), rng.integers(4, size=n)
    partners = np.full(n, -1, dtype=np.int64)
    meter = Progress("make_triplets: graded pairs", n, "pairs")
    for i, (a, grade) in enumerate(zip(anchors, grades)):
        meter.update()
        own = set(categories[a])
        for g in range(grade, -1, -1):
            found = -1
            if g == 3 and label[a] != OTHER and len(same := by_label[label[a]]) > 1:  # any other paper of the label
                at = int(np.searchsorted(same, a))
                found = int(same[_skip(int(rng.integers(len(same) - 1)), at, at + 1)])
            elif g == 2:
                pools = [_other_labels(by_category[c], code[a]) for c in dict.fromkeys(categories[a])]
                sizes = np.cumsum([len(r) - (hi - lo) for r, lo, hi in pools])
                if len(sizes) and sizes[-1]:
                    k = int(rng.integers(sizes[-1]))
                    j = int(np.searchsorted(sizes, k, "right"))
                    r, lo, hi = pools[j]
                    found = int(r[_skip(k - (sizes[j - 1] if j else 0), lo, hi)])
            elif g == 1:
                r, lo, hi = _other_labels(by_archive[archive[a]], code[a])
                for _ in range(ROUNDS if len(r) > hi - lo else 0):
                    drawn = r[_skip(rng.integers(len(r) - (hi - lo), size=DRAWS), lo, hi)]
                    if (found := next((int(c) for c in drawn if own.isdisjoint(categories[c])), -1)) >= 0:
                        break
            elif g == 0:
                outside = papers.height - len(gaps[archive[a]])
                for _ in range(ROUNDS if outside else 0):
                    at = rng.integers(outside, size=DRAWS)
                    drawn = at + np.searchsorted(gaps[archive[a]], at, side="right")
                    if (found := next((int(c) for c in drawn if code[c] != code[a] and own.isdisjoint(categories[c])), -1)) >= 0:
                        break
            if found >= 0:
                partners[i], grades[i] = found, g
                break
    keep = partners >= 0
    return anchors[keep], partners[keep], grades[keep]


def build(papers: pl.DataFrame, n_triplets: int, n_pairs: int, hard_fraction: float, seed: list[int],
          n_graded: int = 0) -> dict[str, pl.DataFrame]:
    """All three kinds for one split, each from its own generator (seeded with `seed`, plus 1 for same-label pairs and
    2 for graded ones): a sweep of one kind's count, or of hard_fraction (triplets), draws the other kinds alike."""
    rng = np.random.default_rng(seed)
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
    a, p = anchor_positive_pairs(papers, n_pairs, np.random.default_rng([*seed, 1]))
    same_label = pl.DataFrame(
        {"anchor": take["abstract"].gather(a), "positive": take["abstract"].gather(p), "anchor_id": take["id"].gather(a),
         "positive_id": take["id"].gather(p), "label": take["label"].gather(a)},
        schema=PAIR_SCHEMA,
    )  # fmt: skip
    title_abstract = papers.select(anchor="title", positive="abstract", id="id", label="label")
    a, p, grade = graded_partners(papers, n_graded, np.random.default_rng([*seed, 2]))
    graded = pl.DataFrame(
        {"anchor": take["abstract"].gather(a), "positive": take["abstract"].gather(p), "anchor_id": take["id"].gather(a),
         "positive_id": take["id"].gather(p), "score": np.asarray(GRADE_SCORES)[grade], "same_label": (grade == 3).astype(np.int64)},
        schema=GRADED_SCHEMA,
    )  # fmt: skip
    return {"triplets": triplets, "title_abstract": title_abstract, "same_label": same_label, "graded_pairs": graded}
