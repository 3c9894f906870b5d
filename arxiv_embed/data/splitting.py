"""The split stage's algorithm: every paper to exactly one of train / eval / test.

`stratified` splits every label in the same proportions, so rare labels still appear in every split;
`time` trains on the oldest papers and tests on the newest. The order within a label comes from a
hash of (seed, id), so the split does not depend on the input's row order. Papers with the same abstract
(a resubmission under a new id, a retitled copy: clean keeps them, their titles differ) then share one
split, so no held-out abstract is trained on: the most held-out one of them drew for `stratified`, and for
`time` the oldest one's, since a later copy of an abstract is no new paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import polars as pl

from arxiv_embed.errors import UserError

if TYPE_CHECKING:
    from arxiv_embed.schema.split import Split

DATE_COLUMNS = {"first_version": "first_version_date", "update_date": "update_date"}


def split_sizes(n: int, cfg: Split) -> tuple[int, int]:
    """(eval, test) papers out of n: at least one each when n >= 3, and at least one for train."""
    n_test = min(max(1, round(n * cfg.test_fraction)), max(n - 1, 0))
    n_eval = min(max(1, round(n * cfg.eval_fraction)), max(n - 1 - n_test, 0))
    return n_eval, n_test


def assign(rank: pl.Expr, n_eval: pl.Expr, n_test: pl.Expr) -> pl.Expr:
    """Rank 0.. (in the order that goes to test first) -> split name."""
    return pl.when(rank < n_test).then(pl.lit("test")).when(rank < n_test + n_eval).then(pl.lit("eval")).otherwise(pl.lit("train"))


def stratified(keys: pl.DataFrame, cfg: Split) -> pl.DataFrame:
    sizes = {label: split_sizes(n, cfg) for label, n in keys["label"].value_counts().iter_rows()}
    plan = pl.DataFrame(
        {"label": list(sizes), "n_eval": [e for e, _ in sizes.values()], "n_test": [t for _, t in sizes.values()]},
        schema_overrides={"n_eval": pl.UInt32, "n_test": pl.UInt32},
    )
    rank = pl.col("order").rank("ordinal").over("label") - 1
    return keys.join(plan, on="label").with_columns(split=assign(rank, pl.col("n_eval"), pl.col("n_test")))


def by_time(keys: pl.DataFrame, cfg: Split) -> pl.DataFrame:
    """Newest papers to test, the next newest to eval, the rest (and every paper without a date) to train."""
    n_eval, n_test = split_sizes(keys.height, cfg)
    if (dated := keys.height - keys["date"].null_count()) < n_eval + n_test:  # else undated papers would fill test and eval
        raise UserError(f"split.method=time puts the {n_test + n_eval:,} newest papers in test and eval, but only {dated:,} of "
                        f"{keys.height:,} papers have a date (split.time_field={cfg.time_field}, or the other date field): "
                        "use split.method: stratified, or lower split.test_fraction and split.eval_fraction")
    newest_first = keys.sort("date", "order", descending=True, nulls_last=True).with_row_index("rank")
    return newest_first.with_columns(split=assign(pl.col("rank"), pl.lit(n_eval), pl.lit(n_test)))


def keep_copies_together(keys: pl.DataFrame, to: Literal["held_out", "first"] = "held_out") -> pl.DataFrame:
    """keys (with `split` and `abstract_key`): every paper of an abstract in one split. to="held_out": the most held-out
    split one of its copies drew (test, then eval, then train): test and eval only gain papers, a label's shares move
    by its copies. to="first": the split its oldest copy drew (time splits: copies are newer, so the newest papers'
    test holds no abstract that was out before the cut, and train none that came after it)."""
    if to == "first":
        first = pl.col("split").sort_by(pl.col("date"), pl.col("order"), nulls_last=True).first().over("abstract_key")
        return keys.with_columns(split=first)
    held_out = pl.col("split").replace_strict({"test": 0, "eval": 1, "train": 2}, return_dtype=pl.UInt8).min().over("abstract_key")
    return keys.with_columns(split=pl.when(held_out == 0).then(pl.lit("test")).when(held_out == 1).then(pl.lit("eval")).otherwise(pl.lit("train")))


def assign_splits(keys: pl.DataFrame, cfg: Split) -> pl.DataFrame:
    """keys (id, label, date, order, abstract_key) with a `split` column, by split.method; copies of one
    abstract together."""
    if cfg.method == "stratified":
        return keep_copies_together(stratified(keys, cfg))
    assigned = keep_copies_together(by_time(keys, cfg), to="first")
    if missing := {"eval", "test"} - set(assigned["split"].unique()):
        raise UserError(f"split.method=time: {' and '.join(sorted(missing))} would be empty: every paper drawn for it is a later "
                        "copy of an older abstract, which goes with the older paper to train; raise split.test_fraction and "
                        "split.eval_fraction, or use split.method: stratified")
    return assigned
