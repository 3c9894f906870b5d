"""requirements.lock: the exact version of every package the committed run was made with, as pip constraints.

`make setup` installs through it (constraints.txt includes it), so a fresh clone gets the polars, pyarrow,
transformers, ... that wrote the committed `dvc.lock`, and its `make repro` the same hashes: a newer pyarrow alone
changes clean's parquet file (its footer names the writer's version). `make lock` writes it again from `.venv`.
torch stays out: constraints.txt pins its version, and GPU users bring their own CUDA build.
"""
from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from arxiv_embed import files

PROJECT = "arxiv-embed"
EXTRAS = ("dev",)
LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# Pinned elsewhere (constraints.txt) or by the user (a CUDA build and its own dependencies).
NOT_LOCKED = frozenset({"torch"})


def requirement_closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS,
                        skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every installed distribution `project[extras]` needs, directly or not, as canonical name -> version.

    Markers are evaluated for this interpreter and platform; `skip` names distributions not to walk into.
    """
    versions: dict[str, str] = {}
    walked: dict[str, set[str]] = {}

    def walk(name: str, wanted_extras: set[str]) -> None:
        key = canonicalize_name(name)
        if key in skip:
            return
        new_extras = ({""} | wanted_extras) - walked.get(key, set())
        if not new_extras:
            return
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # an optional dependency this environment does not have
            return
        walked.setdefault(key, set()).update(new_extras)
        versions[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if any(requirement.marker is None or requirement.marker.evaluate({"extra": extra})
                   for extra in new_extras):
                walk(requirement.name, set(requirement.extras))

    walk(project, set(extras))
    versions.pop(canonicalize_name(project), None)
    return versions


def public_version(version: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: a local label names one build, which another platform's index lacks."""
    return version.split("+", 1)[0]


def lock_text(versions: dict[str, str]) -> str:
    header = (f"# Written by `make lock` from .venv (Python {platform.python_version()}, {sys.platform}): the "
              f"versions the committed run was made with.\n# constraints.txt includes this file; torch is pinned "
              f"there. See arxiv_embed/lockfile.py.\n")
    lines = [f"{name}=={public_version(version)}" for name, version in sorted(versions.items())
             if name not in NOT_LOCKED]
    return header + "\n".join(lines) + "\n"


def pinned(path: Path = LOCK) -> dict[str, str]:
    """The lock's pins, canonical name -> version."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        if not separator:
            raise ValueError(f"{path}:{number}: {line!r} is not `name==version`; run `make lock` to write it again")
        pins[canonicalize_name(name)] = version
    return pins


def main() -> None:
    versions = requirement_closure()
    files.write_text(LOCK, lock_text(versions))
    print(f"{LOCK.name}: {len(versions) - len(NOT_LOCKED & versions.keys())} packages pinned")


if __name__ == "__main__":
    main()
