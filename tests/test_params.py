import os
import subprocess
import sys

import pytest
import yaml

from arxiv_embed.params import ParamsError, load_params, parse_params

from .conftest import ROOT, deep_update


def committed_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params == parse_params(committed_params())


@pytest.mark.parametrize("key", ["finetune.full.learning_rate", "download.oai.sets", "push.gate"])
def test_a_missing_key_is_an_error_naming_it(key):
    # No defaults in the schema: a key deleted from params.yaml must not silently take a value
    # that `dvc params diff` cannot see.
    raw = committed_params()
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section[part]
    del section[leaf]
    with pytest.raises(ParamsError, match=rf"{key}: missing"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("finetune", "learning_rte", 1e-5, "finetune.learning_rte: unknown key"),
        # A typo is told its likely key and the keys its section takes.
        ("finetune", "temprature", 0.1, "finetune.temprature: unknown key (did you mean temperature?); the keys here are mode, loss,"),
        ("split", "seed", 1, "split.seed: unknown key; the keys here are method, time_field, eval_fraction"),
        ("split", "method", "random", "split.method: Input should be 'stratified' or 'time'"),
        ("finetune", "batch_size", "32", "finetune.batch_size: Input should be a valid integer"),
        ("split", "test_fraction", 1.5, "split.test_fraction"),
        ("finetune", "loss", "cosine", "'mnrl', 'cached_mnrl', 'triplet', 'batch_all'"),
        ("download", "source", "ftp", "download.source: Input should be 'oai', 'kaggle' or 'file'"),  # SOURCES' keys
        # MLflow and the Hub refuse these only after push has written the release (and registered it, for the Hub).
        ("download", "kaggle_url", "https://alice:S3CRET@www.kaggle.com/x", "download.kaggle_url: a URL with user:password@ is not supported"),
        ("download", "kaggle_url", "https://alice:p@ssS3CRET@www.kaggle.com/x", "(got 'https://www.kaggle.com/x')"),
        ("download", "kaggle_url", "https://alice:pa?ssS3CRET@www.kaggle.com/x", "(got 'https://www.kaggle.com/x')"),
        ("download", "kaggle_url", "https://www.kaggle.com/x?sig=S3CRET%ZZ x", "(got 'https://www.kaggle.com/x?...')"),
        # A signed link's token would be kept in dvc.lock and the run-cache, as every param value is.
        ("download", "kaggle_url", "https://mirror.example/arxiv.zip?X-Amz-Signature=S3CRET",
         "download.kaggle_url: a URL with a query (?...) is not supported: a signed link's token would be kept in dvc.lock"),
        # A typo in a URL fails here, not after minutes of download retries (or with a traceback).
        ("download", "kaggle_url", "https://www.kaggle.com:80o/api", "download.kaggle_url: not a URL (Port could not be cast"),
        ("download", "kaggle_url", "https://www.kaggle.com /api", "download.kaggle_url: a URL cannot hold spaces"),
        ("download", "kaggle_url", "https://www.kaggle.com/datä", "download.kaggle_url: a URL cannot hold spaces, control characters or non-ASCII"),
        ("download", "kaggle_url", "https://[www.kaggle.com/api", "download.kaggle_url: not a URL (Invalid IPv6 URL)"),
        ("download", "kaggle_url", "https://:443/api", "download.kaggle_url: the URL names no host"),
        ("push", "registry_model_name", "team/arxiv", "push.registry_model_name: 'team/arxiv' is not a registry model name"),
        ("push", "registry_model_name", " ", "push.registry_model_name: ' ' is not a registry model name"),
        ("push", "registry_model_name", "..x", "push.registry_model_name: '..x' is not a registry model name"),
        ("push", "hub", {"enabled": True, "repo_id": "my model", "private": True}, "push.hub.repo_id: 'my model' is not a Hub repo id"),
        # A headline key left out, or a typo in a metric's name, would leave a metric ungated or fail push after the
        # training: refused before any work.
        ("push", "gate", {"metric": "category_retrieval.ndcg@10", "tolerance": 0.0, "headline_tolerances": {
            "category_retrieval.ndcg@10": 0.0, "classification.macro_f1_supported": 0.0,
            "title_to_abstract.ndcg@10": 0.005}}, "push.gate.headline_tolerances has no tolerance for triplet.accuracy"),
        ("push", "gate", {"metric": "category_retrieval.ndcg@10", "tolerance": 0.0, "headline_tolerances": {
            "triplet.acuracy": 0.0, "triplet.accuracy": 0.0, "category_retrieval.ndcg@10": 0.0, "classification.macro_f1_supported": 0.0,
            "title_to_abstract.ndcg@10": 0.005}}, "push.gate.headline_tolerances.triplet.acuracy: 'triplet.acuracy' is "
                                                  "not a metric evaluate gives an interval (did you mean triplet.accuracy?); the metrics are "),
        ("push", "gate", {"metric": "category_retrieval.ndcg@100", "tolerance": 0.0, "headline_tolerances": {
            "triplet.accuracy": 0.0, "category_retrieval.ndcg@10": 0.0, "classification.macro_f1_supported": 0.0,
            "title_to_abstract.ndcg@10": 0.005}}, "push.gate.metric: 'category_retrieval.ndcg@100' is not a metric "
                                                  "evaluate gives an interval (did you mean category_retrieval.ndcg@10?)"),
        ("push", "hub", {"enabled": False, "repo_id": "a--b/c", "private": True}, "push.hub.repo_id: 'a--b/c' is not a Hub repo id"),
        # These failed only after the work before them: embed_base's traceback, evaluate after training, the Hub's refusal
        # after the release and registry.
        ("model", "base", "all MiniLM-L6-v2", "model.base: 'all MiniLM-L6-v2' is not a Hub repo id"),
        ("shared", "seed", 2**32, "shared.seed: Input should be less than or equal to 4294967295"),
        ("push", "license", "apache2", "push.license: 'apache2' is not a license id the Hugging Face Hub accepts (did you mean apache-2.0"),
        # Infinity passes as a float: a traceback in make_triplets or download, a NaN model from finetune.
        ("download", "timeout_s", float("inf"), "download.timeout_s: Input should be a finite number (got inf)"),
        ("finetune", "temperature", float("nan"), "finetune.temperature: Input should be a finite number (got nan)"),
        ("finetune", "margin", 3.0, "finetune.margin: Input should be less than or equal to 2"),
        # A count is one line naming the key, whatever the union of forms it takes.
        ("make_triplets", "triplets_per_split", {"train": "1.2", "eval": 300, "test": 1000},
         "make_triplets.triplets_per_split.train: must be a count (an integer such as 3000), a number per paper (a decimal "
         "such as 0.5) or 'all', and not negative (got '1.2')\n"),
        # DVC sees 1000 and 1000.0 (or -S ...=1e3) as one value, so nothing would rerun, yet 1000.0 read per paper.
        ("make_triplets", "triplets_per_split", {"train": 1.2, "eval": 300, "test": 1000.0},
         "make_triplets.triplets_per_split.test: 1000.0 is a whole number written as a decimal, which would mean 1000 per "
         "paper: write a count as an integer (1000)"),
        # Harvested twice (hours of pages), or a share of max_records twice.
        ("download", "oai", {"endpoint": "https://export.arxiv.org/oai2", "sets": ["cs", "math", "cs"], "from_date": None,
                             "until_date": None, "max_retries": 5, "request_interval_s": 3.0},
         "download.oai.sets: lists cs more than once: give each once (got ['cs', 'math', 'cs'])"),
        ("finetune", "train_data", ["labels", "title_abstract", "labels"], "finetune.train_data: lists labels more than once"),
        # An empty name is the project's root; a folder without a model failed only in embed_base, after the data stages.
        ("model", "base", "", "model.base: names no model"),
        ("model", "base", "data", "model.base: 'data' is a path but holds no model (no modules.json or config.json)"),
        ("make_triplets", "triplets_per_split", {"train": float("inf"), "eval": 300, "test": -1},
         "per_split.train: must be a count (an integer such as 3000), a number per paper (a decimal such as 0.5) or 'all', "
         "and not negative (got inf)\n  make_triplets.triplets_per_split.test: must be a count"),
    ],
)
def test_bad_params_name_the_key(section, key, value, expected):
    raw = committed_params()
    raw[section][key] = value
    with pytest.raises(ParamsError, match="params.yaml is invalid") as excinfo:
        parse_params(raw)
    assert expected in f"{excinfo.value}\n" and "S3CRET" not in str(excinfo.value)  # a refused password is not printed


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"download": {"source": "file", "path": None}}, "download.path is empty"),
        ({"download": {"oai": {"from_date": "2026-10-08", "until_date": "2026-10-01"}}}, "from_date must be <= download.oai.until_date"),
        ({"download": {"oai": {"from_date": "2026-02-30"}}}, "download.oai.from_date: not a date of the calendar \\(YYYY-MM-DD\\) \\(got '2026-02-30'\\)"),
        ({"clean": {"min_abstract_words": 700, "max_abstract_words": 600}}, "min_abstract_words must be <="),
        ({"split": {"eval_fraction": 0.5, "test_fraction": 0.5}}, "eval_fraction \\+ split.test_fraction must be < 1"),
        ({"finetune": {"mode": "full", "full": {"eval_steps": 32, "save_steps": 48}}}, "every evaluation must save the checkpoint the best model is loaded from; set finetune.full.save_steps: 32"),
        ({"push": {"hub": {"enabled": True, "repo_id": None}}}, "push.hub.repo_id is empty"),
        ({"make_triplets": {"triplets_per_split": {"test": 0}}}, "triplets_per_split.test must be above 0"),
        ({"finetune": {"batch_size": 32, "adapter": {"per_label": 17}}}, "per_label=17 leaves room for one label in a batch of finetune.batch_size=32"),
        ({"finetune": {"batch_size": 126, "adapter": {"per_label": 4}}}, "finetune.batch_size=126 is not a multiple of finetune.adapter.per_label=4: a "
         "batch holds whole chunks of per_label papers, 124 rows here"),
        ({"make_triplets": {"same_label_pairs_per_split": {"train": 0}}, "finetune": {"hard_negatives": {"weight": 1.0}}},
         "hard_negatives.weight > 0 mines negatives"),
        # A gate on a metric this run's test triplets cannot give would fail push, after the training.
        ({"make_triplets": {"hard_negative_fraction": 0.0}, "push": {"gate": {"headline_tolerances": {"triplet.accuracy_hard": 0.0}}}},
         "push.gate names triplet.accuracy_hard, which evaluate does not report with make_triplets.hard_negative_fraction=0.0"),
        ({"shared": {"label": "archive"}, "push": {"gate": {"metric": "triplet.accuracy_hard"}}},
         "push.gate names triplet.accuracy_hard, which evaluate does not report with shared.label=archive"),
        # A file finetune reads, made empty on purpose, would fail only after embed_base's encoding.
        ({"finetune": {"loss": "triplet", "train_data": ["triplets"]}, "make_triplets": {"triplets_per_split": {"train": 0}}},
         "make_triplets.triplets_per_split.train is 0, but finetune trains on triplets: set it above 0"),
        ({"finetune": {"loss": "cosent", "train_data": ["graded_pairs"]}, "make_triplets": {"graded_pairs_per_split": {"train": 0}}},
         "make_triplets.graded_pairs_per_split.train is 0, but finetune trains on graded_pairs"),
        ({"finetune": {"mode": "full"}, "make_triplets": {"triplets_per_split": {"eval": 0}}},
         "make_triplets.triplets_per_split.eval is 0, but finetune.mode full evaluates every eval_steps on them"),
        # Fewer rows than one batch: finetune would refuse them after make_triplets and embed_base.
        ({"make_triplets": {"max_train_papers": 5}},
         "make_triplets.max_train_papers=5 gives finetune at most 5 labels rows, fewer than one finetune.batch_size=128"),
        ({"finetune": {"loss": "triplet", "train_data": ["triplets"]}, "make_triplets": {"triplets_per_split": {"train": 10}}},
         "make_triplets.triplets_per_split.train=10 gives finetune at most 10 triplets rows, fewer than one finetune.batch_size=128"),
        ({"finetune": {"mode": "full", "batch_size": 64, "full": {"nproc_per_node": 2}}, "make_triplets": {"max_train_papers": 100}},
         "make_triplets.max_train_papers=100 gives finetune at most 100 labels rows, fewer than one finetune.batch_size=64 x "
         "finetune.full.nproc_per_node=2"),
    ],
)
def test_cross_field_rules(changes, expected):
    raw = deep_update(committed_params(), changes)
    parse_params(deep_update(committed_params(), {section: {} for section in changes}))  # the committed values pass
    with pytest.raises(ParamsError, match=expected) as raised:
        parse_params(raw)
    # A rule over several keys reads as its own message, not "(top level): ...".
    assert "Value error" not in str(raised.value) and "(top level)" not in str(raised.value), raised.value


def test_full_mode_rules_do_not_bind_adapter_mode():
    """finetune.full's knobs are read (and tracked by dvc.yaml) only in mode full."""
    parse_params(deep_update(committed_params(), {"finetune": {"mode": "adapter", "full": {"eval_steps": 32, "save_steps": 48}}}))


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ([""], "download.oai.sets.0: String should have at least 1 character (got '')"),
        (["cs", "cs, math"], "download.oai.sets.1: String should match pattern"),
        (["physics:"], "download.oai.sets.0: String should match pattern"),
        (["cs.AI"], "download.oai.sets.0: String should match pattern"),  # arXiv's set for it is cs:cs:AI
    ],
)
def test_oai_sets_are_set_specs_never_empty(sets, expected):
    # An empty set spec is no filter: it would harvest every arXiv record in the date window.
    parse_params(deep_update(committed_params(), {"download": {"oai": {"sets": ["cs", "physics:astro-ph", "cs:cs:AI"]}}}))
    with pytest.raises(ParamsError, match="params.yaml is invalid") as excinfo:
        parse_params(deep_update(committed_params(), {"download": {"oai": {"sets": sets}}}))
    assert expected in str(excinfo.value)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_scientific_notation_is_a_float_as_dvc_reads_it(tmp_path):
    # PyYAML alone reads `2e-5` as a string; DVC (YAML 1.2) writes and reads it as a float.
    raw = committed_params()
    raw["finetune"]["full"]["learning_rate"] = "LR"
    text = yaml.safe_dump(raw, sort_keys=False).replace("learning_rate: LR", "learning_rate: 2e-5")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.finetune.full.learning_rate == 2e-5
    assert params.shared.seed == 42 and isinstance(params.shared.seed, int)


@pytest.mark.parametrize(("written", "expected"), [("2026-10-01", None), ("2026-02-30", r"not a date of the calendar \(YYYY-MM-DD\) \(got '2026-02-30'\)")])
def test_an_unquoted_date_is_read_as_text_and_a_bad_one_names_its_key(tmp_path, written, expected):
    # PyYAML would turn `from_date: 2026-02-30` into a bare ValueError with no key; as text, the schema checks it.
    raw = committed_params()
    raw["download"]["oai"]["from_date"] = "DATE"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False).replace("from_date: DATE", f"from_date: {written}"))
    if expected is None:
        assert load_params(tmp_path / "params.yaml").download.oai.from_date == written
    else:
        with pytest.raises(ParamsError, match=rf"download.oai.from_date: {expected}"):
            load_params(tmp_path / "params.yaml")


def test_make_check_prints_one_message_and_no_traceback(tmp_path):
    # `make check` (run first by `make repro`) validates params.yaml alone through `python -m arxiv_embed.params`.
    raw = committed_params()
    raw["clean"]["min_abstract_wordz"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "arxiv_embed.params"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("params: error: params.yaml is invalid:") and "clean.min_abstract_wordz: unknown key" in result.stderr


def test_a_stage_with_bad_params_prints_one_message_and_no_traceback(tmp_path):
    """Every stage goes through arxiv_embed.errors.run: a user error is one line naming the key, exit 1."""
    raw = committed_params()
    raw["split"]["method"] = "random"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "stages.split"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stderr.startswith("split: error: params.yaml is invalid:\n  split.method: Input should be 'stratified' or 'time'")
    assert "Traceback" not in result.stderr


def test_a_stage_answers_help_and_refuses_stray_arguments_before_any_work(tmp_path):
    """params.yaml holds every knob: `--help` or a mistyped option must not run a stage (push would release a model)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(committed_params()))

    def stage(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    helped, refused = stage("stages.push", "--help"), stage("stages.split", "--dry-run")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m stages.push") and "params.yaml" in helped.stdout
    assert "upload it to the Hugging Face Hub." in " ".join(helped.stdout.split())  # its first line: a whole sentence
    assert refused.returncode == 2 and "unrecognized arguments: --dry-run" in refused.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]  # nothing read, nothing written
    # A user error names the stage as dvc.yaml does: evaluate_base runs `stages.evaluate --model base`.
    missing = stage("stages.evaluate", "--model", "base")
    assert missing.returncode == 1 and missing.stderr.startswith("evaluate_base: error: "), missing.stderr


def test_the_schema_offers_exactly_the_sources_the_table_has():
    from typing import get_args

    from arxiv_embed.data.sources import SOURCES
    from arxiv_embed.params import Download

    assert set(get_args(Download.model_fields["source"].annotation)) == set(SOURCES)


def test_every_source_describes_its_own_data_for_the_card():
    """The card's words come from each SOURCES entry: a new source cannot fall through to another's."""
    from arxiv_embed.data.sources import SOURCES
    from arxiv_embed.data.sources import describe_source
    from tests.harness import params_with

    texts = {name: describe_source(params_with({"download": {"source": name, "path": "papers.jsonl", "max_records": 7}}).download)
             for name in SOURCES}
    assert len(set(texts.values())) == len(SOURCES) and all("first 7 records" in text for text in texts.values())
    assert "papers.jsonl" in texts["file"] and "OAI-PMH" in texts["oai"]
