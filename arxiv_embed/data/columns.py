"""The column contract between stages: what clean writes (data/clean/papers.parquet) and split
writes (data/split/*.parquet, plus the chosen label), which make_triplets, finetune and evaluate read."""

import polars as pl

PAPER_SCHEMA = {
    "id": pl.String,
    "title": pl.String,
    "abstract": pl.String,
    "authors": pl.String,
    "categories": pl.List(pl.String),  # the first one is the primary category
    "primary_category": pl.String,  # cs.CV
    "archive": pl.String,  # cs, hep-th, astro-ph
    "first_version_date": pl.Date,
    "update_date": pl.Date,
}
PAPER_COLUMNS = list(PAPER_SCHEMA)
OTHER = "other"  # split's label for the rare labels it merges (split.rare_labels: other): no subject they share
# label: params.shared.label's column, rare labels merged; abstract_key: same_abstract_key(abstract), hashed once by
# split, which make_triplets reads instead of hashing again (~15 s a million abstracts)
SPLIT_SCHEMA = {**PAPER_SCHEMA, "label": pl.String, "abstract_key": pl.UInt64}


def same_abstract_key(abstract: pl.Expr) -> pl.Expr:
    """A 64-bit hash of the abstract in Unicode's compatibility form (NFKC: an accent composed or not, a ligature),
    lower-cased, invisible format characters (a soft hyphen inside a word) deleted, and each run of characters other
    than letters and digits as one space: copies that differ in case, punctuation, spacing, line breaks or such encoding
    share it. split keeps a paper's copies in one split; evaluate's title search counts a copy of a paper's abstract as
    its own."""
    return (abstract.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\p{Cf}", "")
            .str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars().hash(0))
