"""The quality benchmark's helpers (the benchmark itself runs with `python -m benchmarks quality`)."""

from __future__ import annotations

import gzip
from pathlib import Path

from benchmarks import quality


def test_subsample_is_seeded_random_and_keeps_whole_records(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": "{i}"}}\n' for i in range(100)))
    first, again = (gzip.decompress(quality.subsample(source, 10, tmp_path / name).read_bytes()).decode().splitlines()
                    for name in ("a.jsonl.gz", "b.jsonl.gz"))
    assert first == again and len(first) == 10 and len(set(first)) == 10
    assert first != [f'{{"id": "{i}"}}' for i in range(10)]  # not the file's first records (sorted by id: the oldest)


def test_headline_reads_evaluates_intervals_and_verdicts_need_the_interval_above_zero() -> None:
    evaluation = {
        "base": {"category_retrieval": {"ndcg@10": 0.40}, "title_to_abstract": {"ndcg@10": 0.95}},
        "finetuned": {"category_retrieval": {"ndcg@10": 0.44}, "title_to_abstract": {"ndcg@10": 0.946}},
        "delta": {"category_retrieval": {"ndcg@10": 0.04}, "title_to_abstract": {"ndcg@10": -0.004}},
        "delta_ci95": {"category_retrieval.ndcg@10": [0.03, 0.05], "title_to_abstract.ndcg@10": [-0.01, 0.001]},
    }
    rows = quality.headline(evaluation)
    assert rows["category_retrieval.ndcg@10"] == (0.40, 0.44, 0.04, 0.03, 0.05)
    assert quality.verdict("category_retrieval.ndcg@10", 0.04, 0.03)
    assert not quality.verdict("category_retrieval.ndcg@10", 0.04, -0.001)  # a gain must clear zero
    assert not quality.verdict("category_retrieval.ndcg@10", 0.02, 0.01)  # and reach the target
    assert quality.verdict("title_to_abstract.ndcg@10", -0.004, -0.01)
    assert not quality.verdict("title_to_abstract.ndcg@10", -0.006, -0.01)


def test_candidates_are_valid_params() -> None:
    from arxiv_embed.training import losses
    from arxiv_embed.workspace import params_with

    for overrides in quality.CANDIDATES.values():
        losses.check_combination(params_with(overrides).finetune)  # raises naming the param
