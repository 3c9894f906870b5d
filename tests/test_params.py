import re
from pathlib import Path

import pytest
import yaml

from arxiv_embed.params import ParamsError, flatten, load_params, parse_params

from .conftest import ROOT


def committed_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.shared.label in {"primary_category", "archive"}
    # Outside the harvest window, a key left out of params.yaml means what params.yaml documents.
    defaults = flatten(parse_params({}))
    differ = {key: value for key, value in flatten(params).items() if value != defaults[key] and not key.startswith("download.")}
    assert differ == {}


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("finetune", "learning_rte", 1e-5, "finetune.learning_rte: unknown key"),
        ("split", "method", "random", "split.method: Input should be 'stratified' or 'time'"),
        ("finetune", "batch_size", "32", "finetune.batch_size: Input should be a valid integer"),
        ("split", "test_fraction", 1.5, "split.test_fraction"),
        ("finetune", "loss", "cosine", "'triplet', 'mnrl', 'cached_mnrl' or 'batch_hard'"),
    ],
)
def test_bad_params_name_the_key(section, key, value, expected):
    raw = committed_params()
    raw[section][key] = value
    with pytest.raises(ParamsError, match="params.yaml is invalid") as excinfo:
        parse_params(raw)
    assert expected in str(excinfo.value)


CROSS_FIELD_RULES = [
    # (overrides that break the rule, the same at the boundary the rule still allows, message)
    ({"download": {"source": "file", "path": None}}, {"download": {"source": "file", "path": "x.jsonl"}}, "download.path"),
    ({"download": {"oai": {"from_date": "2024-01-02", "until_date": "2024-01-01"}}},
     {"download": {"oai": {"from_date": "2024-01-01", "until_date": "2024-01-01"}}}, "download.oai.from_date must be <="),
    ({"clean": {"min_abstract_words": 31, "max_abstract_words": 30}},
     {"clean": {"min_abstract_words": 30, "max_abstract_words": 30}}, "clean.min_abstract_words must be <="),
    ({"split": {"eval_fraction": 0.5, "test_fraction": 0.5}},
     {"split": {"eval_fraction": 0.5, "test_fraction": 0.25}}, "split.eval_fraction + split.test_fraction must be < 1"),
    ({"finetune": {"eval_steps": 4, "save_steps": 6}}, {"finetune": {"eval_steps": 3, "save_steps": 6}},
     "finetune.save_steps must be a multiple of finetune.eval_steps"),
    ({"push": {"hub": {"enabled": True, "repo_id": None}}}, {"push": {"hub": {"enabled": True, "repo_id": "u/m"}}},
     "push.hub.repo_id is empty"),
]


@pytest.mark.parametrize(("broken", "allowed", "message"), CROSS_FIELD_RULES, ids=[m.split()[0] for _, _, m in CROSS_FIELD_RULES])
def test_cross_field_rules(broken: dict, allowed: dict, message: str) -> None:
    """Every model_validator in arxiv_embed/params.py: refused past its boundary, accepted at it."""
    from arxiv_embed.workspace import deep_update

    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(deep_update(committed_params(), broken))
    parse_params(deep_update(committed_params(), allowed))


def test_every_cross_field_rule_is_tested() -> None:
    import arxiv_embed.params as module

    source = Path(module.__file__).read_text()
    assert source.count("@model_validator") == len(CROSS_FIELD_RULES)


def test_missing_file_says_where(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_scientific_notation_is_a_float_as_dvc_reads_it(tmp_path):
    # PyYAML alone reads `2e-5` as a string; DVC (YAML 1.2) writes and reads it as a float.
    raw = committed_params()
    raw["finetune"]["learning_rate"] = "LR"
    text = yaml.safe_dump(raw, sort_keys=False).replace("learning_rate: LR", "learning_rate: 2e-5")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.finetune.learning_rate == 2e-5
    assert params.shared.seed == 42 and isinstance(params.shared.seed, int)
