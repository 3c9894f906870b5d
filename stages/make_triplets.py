"""make_triplets: each split's papers -> training/evaluation pairs and triplets, within that split
(the algorithm: arxiv_embed/data/triplets.py).

Per split, seeded by shared.seed and the split's name (one split's counts never move another's).
Train kinds come from a stratified, seeded sample of the train split (make_triplets.max_train_papers,
written to data/triplets/train_papers.parquet); counts given as decimals are per paper, so the
training data grows with the data. Papers are read in id order: the input's row order changes nothing.
Writes data/triplets/ and metrics/make_triplets.json.
"""

from __future__ import annotations

import polars as pl

from arxiv_embed import paths
from arxiv_embed.data.sampling import read_stratified_sample
from arxiv_embed.data.triplets import build, resolve_count
from arxiv_embed.files import atomic_path, read_table, write_json
from arxiv_embed.schema.base import load
from arxiv_embed.schema.make_triplets import MakeTripletsParams
from arxiv_embed.errors import START_OVER, UserError, run

SPLIT_SEED = {split: i for i, split in enumerate(paths.SPLITS)}


def main() -> None:
    params = load(MakeTripletsParams)
    cfg = params.make_triplets
    metrics: dict[str, object] = {"hard_negative_fraction": cfg.hard_negative_fraction}
    with atomic_path(paths.TRIPLETS_DIR) as out:
        out.mkdir()
        for split in paths.SPLITS:
            columns = ["id", "title", "abstract", "label", "archive", "primary_category", "categories", "abstract_key"]
            source = paths.split_file(split)
            if split == "train":  # the sample is drawn on ids and labels: 1.9M train abstracts are never all in memory
                papers, split_papers = read_stratified_sample(source, columns, cfg.max_train_papers, params.shared.seed, "split")
            else:
                papers = read_table(source, columns, "split").sort("id")  # the draws below read rows by position
            n_triplets = resolve_count(getattr(cfg.triplets_per_split, split), papers.height)
            n_pairs = resolve_count(getattr(cfg.same_label_pairs_per_split, split), papers.height)
            n_graded = resolve_count(getattr(cfg.graded_pairs_per_split, split), papers.height)
            # Copies of one abstract (retitled, re-filed: split keeps them in one split) would pair a paper with itself,
            # as an unsolvable negative or a trivial positive: the first of each takes part (split hashed the abstracts).
            distinct = papers.filter(pl.col("abstract_key").is_first_distinct()).drop("abstract_key")
            if split == "train":  # what the labels kind, mining and evaluate's classifier read: one copy of each abstract too
                distinct.write_parquet(out / paths.TRAIN_SAMPLE.name)
            kinds = build(distinct, n_triplets, n_pairs, cfg.hard_negative_fraction, [params.shared.seed, SPLIT_SEED[split]], n_graded)
            sizes = distinct["label"].value_counts()
            if split == "test" and not n_triplets:  # a per-paper count that rounds to 0 (the schema refuses a plain 0)
                raise UserError(f"make_triplets.triplets_per_split.test={cfg.triplets_per_split.test} makes 0 triplets of "
                                f"{papers.height} test papers, and evaluate's triplet lens scores them: raise it")
            if split == "test" and kinds["triplets"].is_empty():  # evaluate's triplet lens scores them: refused here, not there
                raise UserError(f"no test triplet can be made from the {papers.height} test papers of {sizes.height} label(s) "
                                f"({', '.join(sizes['label'].sort().head(5))}): a triplet needs a label with 2+ papers and "
                                "another label; use more papers (download.max_records) or lower split.min_papers_per_label")
            for kind, frame in kinds.items():
                frame.write_parquet(out / paths.training_file(split, kind).name)
            single = sizes.filter(pl.col("count") == 1)["label"].sort().to_list()
            types = kinds["triplets"]["negative_type"]
            metrics[split] = {
                "papers": papers.height,
                "same_abstract_copies_left_out": papers.height - distinct.height,
                **({"split_papers": split_papers} if split == "train" else {}),
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
            pairs_short = "too few labels with 2+ papers"
            for kind, asked, why in (("triplets", n_triplets, "one label only: no negative" if sizes.height < 2 else pairs_short),
                                     ("same_label", n_pairs, pairs_short), ("graded_pairs", n_graded, "anchors with no partner of their drawn grade or a lower one")):
                if kinds[kind].height < asked:
                    print(f"  only {kinds[kind].height} of {asked} {kind}: {why} in {split}")
            hard, requested = metrics[split]["hard_negatives"], metrics[split]["hard_requested"]
            if hard < requested:  # the triplet lens's hard figure (and the headline's half-hard mix) then reads otherwise
                why = ("shared.label=archive: no other label shares an anchor's archive" if params.shared.label == "archive"
                       else "too few labels share an archive")
                print(f"  only {hard} of {requested} hard negatives (same archive, another label): {why} in {split}; "
                      "the other triplets have random negatives")
            for kind, frame in kinds.items():  # drawn with replacement: a small split repeats rows, which weigh twice
                if (distinct := frame.hash_rows().n_unique()) < frame.height:  # 64-bit row hashes: 0.2 s a million rows, not 10
                    print(f"  {kind}: {distinct} distinct of {frame.height} rows in {split} (a small split repeats draws)")
    write_json(paths.metrics_file("make_triplets"), metrics)


if __name__ == "__main__":
    run(main, "make_triplets", START_OVER)
