"""The project's map stays true: every stage's `deps` in dvc.yaml list each project module the stage
imports (directly or through other modules), so a change to shared code reruns exactly the stages
that use it."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
import tomllib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import yaml

from tests.conftest import ROOT, dvc, ran_stages

PACKAGES = ("arxiv_embed", "stages")


def module_file(name: str) -> Path | None:
    """The file of project module `name` (a module file, or a package's __init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Project module files that `path` imports anywhere in its body (lazy imports included)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from pkg import mod` imports pkg.mod when it is a module, else a name from pkg.
            names = [f"{node.module}.{alias.name}" if module_file(f"{node.module}.{alias.name}") else node.module for alias in node.names]
        else:
            continue
        found |= {file for name in names if (file := module_file(name))}
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(path)
    # A package's __init__ that holds only a docstring changes no behaviour.
    return {p for p in seen if p.name != "__init__.py" or ast.parse(p.read_text()).body[1:]}


def test_every_stage_depends_on_each_module_it_imports() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]  # python -m stages.X ...
        needed = {str(p.relative_to(ROOT)) for p in closure(module_file(module))}
        declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
        assert declared == needed, f"dvc.yaml stage {name}: missing deps {sorted(needed - declared)}, stale deps {sorted(declared - needed)}"


def test_finetune_depends_on_every_data_file_it_can_read_and_no_test_file() -> None:
    """Each kind's train file and the evaluators' eval files (training/data.py), so a changed file retrains;
    nothing of the test split, so a test-only make_triplets count does not."""
    from arxiv_embed import paths
    from arxiv_embed.training.data import KINDS

    deps = {dep for dep in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["finetune"]["deps"] if dep.startswith("data/")}
    readable = {kind.file("train") for kind in KINDS.values()} | {paths.training_file("eval", k) for k in ("triplets", "title_abstract")}
    assert {str(p) for p in readable} | {"data/embeddings/base-train.sha256"} == deps


# ------------------------------------------------------------------ params: each tracked knob is read

MODES = ("adapter", "full")


def leaves(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of a params mapping's leaves (a list value is one leaf, and so is a mapping keyed by metric names,
    push.gate.headline_tolerances: its keys are data, read by iterating it)."""
    out = []
    for key, value in tree.items():
        nested = isinstance(value, dict) and not any("." in name for name in value)
        out += leaves(value, f"{prefix}{key}.") if nested else [f"{prefix}{key}"]
    return out


def tracked(stage: dict, params: dict, mode: str) -> set[str]:
    """The leaf keys a stage's `params:` names, with finetune.${finetune.mode} resolved as DVC does."""
    every = leaves(params)
    keys = set()
    for entry in stage.get("params", []):
        if entry == {"params.yaml": None}:  # the whole file (params_check)
            return set(every)
        entry = entry.replace("${finetune.mode}", mode)
        keys |= {key for key in every if key == entry or key.startswith(f"{entry}.")}
    return keys


# Stages whose output records every knob of a section (push: the model card's recipe and the release's manifest),
# so a knob read only there still changes the output. Elsewhere a model_dump() only logs params to MLflow.
WHOLESALE = {"push"}


def code_only(source: str) -> str:
    """Python source with its comments and string literals (docstrings, messages) blanked out, where they stood: a
    knob named in a docstring or an error message is not read. (Before Python 3.12 an f-string is one token, its
    expressions blanked too: stricter, never laxer.)"""
    lines = io.StringIO(source).readlines()  # as tokenize numbers them: splitlines() also splits at a form feed
    literal = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in literal:
            (first, start), (last, end) = token.start, token.end
            for number in range(first, last + 1):
                line = lines[number - 1]
                left, right = (start if number == first else 0), (end if number == last else len(line.rstrip("\n")))
                lines[number - 1] = line[:left] + " " * (right - left) + line[right:]
    return "".join(lines)


def reads(code: str, key: str, wholesale: bool = False) -> bool:
    """Whether `code` reads params key `key`: as an attribute (`.leaf`, or `.parent.leaf` for a nested key, or
    `shared.leaf`: a section every stage has, read through its name), by split name (`getattr(cfg.parent, split)`),
    or, where `wholesale`, as a whole section (`.<section>.model_dump()`, finetune's `.read_by_mode()`). A static
    check, so a knob's name must appear where it is read."""
    parts = key.split(".")
    if wholesale and (re.search(rf"\.{parts[0]}\.model_dump\(\)", code)
                      or (parts[0] == "finetune" and ".finetune.read_by_mode()" in code)):
        return True
    if len(parts) > 2 and re.search(rf"getattr\([\w.]*\b{parts[-2]},", code):
        return True
    if len(parts) > 2 or parts[0] == "shared":
        return re.search(rf"\b{parts[-2]}\.{parts[-1]}\b", code) is not None
    return re.search(rf"\.{parts[-1]}\b", code) is not None


def test_a_knob_named_only_in_a_docstring_comment_or_message_is_not_read() -> None:
    source = '''"""Which model is `model.base`."""
x = f"set model.max_seq_length to {limit}"  # params.model.trust_remote_code
y = cfg.shared.seed
'''
    code = code_only(source)
    assert len(code) == len(source) and not [key for key in ("model.base", "model.max_seq_length", "model.trust_remote_code")
                                             if reads(code, key)]
    assert reads(code, "shared.seed")


def test_every_tracked_knob_is_read_by_its_stage_and_every_knob_by_some_stage() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    read_somewhere: set[str] = set()
    for mode in MODES:
        params["finetune"]["mode"] = mode
        for name, stage in stages.items():
            if name == "params_check":  # validates every key through the schema (tests/test_params.py), reads none
                continue
            code = "\n".join(code_only(p.read_text()) for p in closure(module_file(stage["cmd"].split()[2])))
            keys = tracked(stage, params, mode)
            unread = sorted(key for key in keys if not reads(code, key, wholesale=name in WHOLESALE))
            assert not unread, f"dvc.yaml stage {name} (finetune.mode={mode}) tracks {unread}, which its code never reads"
            other = next(m for m in MODES if m != mode)
            assert not [k for k in keys if k.startswith(f"finetune.{other}.")], f"stage {name} tracks the other mode's knobs under mode={mode}"
            read_somewhere |= keys
    from arxiv_embed.schema.download import FETCH_PATIENCE

    def dotted(exclude: dict, prefix: str = "") -> set[str]:
        """model_dump's exclude form ({"a": True, "b": {"c"}, "d": {...}}) as dotted keys."""
        keys = set()
        for key, value in exclude.items():
            if value is True:
                keys.add(prefix + key)
            elif isinstance(value, set):
                keys |= {f"{prefix}{key}.{leaf}" for leaf in value}
            else:
                keys |= dotted(value, f"{prefix}{key}.")
        return keys

    untracked = dotted(FETCH_PATIENCE)
    assert untracked <= set(leaves(params)) and not untracked & read_somewhere  # how patiently: no stage reruns for it
    unused = sorted(set(leaves(params)) - read_somewhere - untracked)
    assert not unused, f"params.yaml knobs no stage tracks and reads: {unused}"


def test_a_change_reruns_only_the_stages_that_read_it(pipeline: Path) -> None:
    """On the tiny DAG (mode adapter): the other mode's knob reruns nothing, this mode's reruns
    finetune (and push, whose card lists it), and a new evaluate key with its schema field only the
    evaluate stages. Restores the project for the other tests."""
    params_file, schema = pipeline / "params.yaml", pipeline / "arxiv_embed" / "schema" / "evaluate.py"
    params_text, schema_text = params_file.read_text(), schema.read_text()

    def changed(edit: Callable[[dict], None]) -> set[str]:
        raw = yaml.safe_load(params_text)
        edit(raw)
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        return set(json.loads(dvc(pipeline, "status", "--json").stdout or "{}"))

    CHECK = {"params_check"}  # every params.yaml change reruns it (a second; its stamp is the same, so nothing after it)
    try:
        assert changed(lambda raw: None) == set()
        assert yaml.safe_load(params_text)["finetune"]["mode"] == "adapter"
        assert changed(lambda raw: raw["finetune"]["full"].update(epochs=7, learning_rate=3e-5)) == CHECK
        # how patiently download fetches (FETCH_PATIENCE): no download again (for OAI, hours of harvest)
        assert changed(lambda raw: (raw["download"].update(timeout_s=5.0), raw["download"]["oai"].update(max_retries=1))) == CHECK
        assert changed(lambda raw: raw["finetune"]["adapter"].update(epochs=2)) == CHECK | {"finetune", "push"}
        # evaluate reads the mode too: adapter mode scores the adapter on embed_base's vectors, full mode encodes
        assert changed(lambda raw: raw["finetune"].update(mode="full")) == CHECK | {"finetune", "evaluate", "push"}
        # the classifier's slice comes from the train sample embed_base already encodes: no re-encoding
        assert changed(lambda raw: raw["evaluate"].update(max_train_papers=7)) == CHECK | {"evaluate_base", "evaluate"}
        # a training-only file of make_triplets (as a train-only count changes it): finetune's, not the encoders'
        pairs = pipeline / "data" / "triplets" / "train_title_abstract.parquet"
        pl.read_parquet(pairs).head(3).write_parquet(pairs)
        assert changed(lambda raw: None) == {"make_triplets", "finetune", "push"}
        dvc(pipeline, "checkout", "--force", "data/triplets")
        # a test-only file (as make_triplets.triplets_per_split.test changes it): the encoders' and evaluate's, never training
        test_triplets = pipeline / "data" / "triplets" / "test_triplets.parquet"
        pl.read_parquet(test_triplets).head(3).write_parquet(test_triplets)
        assert changed(lambda raw: None) == {"make_triplets", "embed_base", "evaluate_base", "evaluate", "push"}
        dvc(pipeline, "checkout", "--force", "data/triplets")
        schema.write_text(schema_text.replace("    map_2d:", "    new_knob: PositiveInt\n    map_2d:"))
        assert changed(lambda raw: raw["evaluate"].update(new_knob=3)) == CHECK | {"evaluate_base", "evaluate"}
    finally:
        params_file.write_text(params_text)
        schema.write_text(schema_text)
        dvc(pipeline, "checkout", "--force", "data/triplets")
    assert changed(lambda raw: None) == set()


def test_a_bad_key_in_any_section_fails_before_any_stage_runs(pipeline: Path) -> None:
    """A sweep that changes the model (embed_base would re-encode: 42 min at 2.7M) with a typo in evaluate's
    section fails in params_check, before embed_base, naming the key."""
    params_file = pipeline / "params.yaml"
    params_text = params_file.read_text()
    raw = yaml.safe_load(params_text)
    raw["model"]["max_seq_length"] = 40
    raw["evaluate"]["min_label_suport"] = 10
    try:
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        result = dvc(pipeline, "repro", "embed_base", check=False)  # a target: the check is upstream of every stage
        assert result.returncode != 0 and ran_stages(result) == ["params_check"]
        assert "evaluate.min_label_suport: unknown key (did you mean min_label_support?)" in result.stdout + result.stderr
        assert (pipeline / "data/params.checked").exists()  # persist: the git-tracked stamp is not deleted by the failure
    finally:
        params_file.write_text(params_text)
    # The fixed params are the ones last checked: nothing reruns.
    assert ran_stages(dvc(pipeline, "repro")) == []
    assert dvc(pipeline, "status", "--json").stdout.strip() in ("{}", "")


def test_requirements_lock_pins_every_dependency_at_a_version_pyproject_allows() -> None:
    """A dependency added to pyproject.toml (or one it brings) without `make lock` would be installed at whatever
    version is newest, and a fresh clone's hashes would drift from the committed dvc.lock unnoticed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from arxiv_embed import lockfile

    pins = lockfile.pinned()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for requirement in direct:
        name = canonicalize_name(requirement.name)
        if name in lockfile.NOT_LOCKED:
            assert name not in pins
            continue
        assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
    # What they bring, as installed here (torch's own dependencies left to its build: a CUDA one differs).
    needed = lockfile.requirement_closure(skip=lockfile.NOT_LOCKED)
    assert sorted(set(needed) - set(pins)) == [], "not in requirements.lock: run `make lock`"
    assert "-c requirements.lock" in (ROOT / "constraints.txt").read_text().splitlines()
