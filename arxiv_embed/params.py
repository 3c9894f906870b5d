"""The whole params.yaml, validated in one go: `python -m arxiv_embed.params` (`make check`, and the DAG's
first stage, params_check, so a bad key of any section fails before any stage works), the tests and the
benchmarks. No stage imports this module: each reads its own sections through its schema part
(arxiv_embed/schema/), so adding a key to one section reruns only that section's stages.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from arxiv_embed.schema.base import PARAMS_FILE, ParamsError, Section, _Yaml12FloatLoader, read_yaml, validate  # noqa: F401 (re-exported)
from arxiv_embed.schema.clean import Clean
from arxiv_embed.schema.download import Download, Oai  # noqa: F401 (re-exported)
from arxiv_embed.schema.embed_base import EmbedBase
from arxiv_embed.schema.evaluate import Evaluate
from arxiv_embed.schema.finetune import Adapter, DataKind, Finetune, Full, LossName  # noqa: F401 (re-exported)
from arxiv_embed.schema.make_triplets import MakeTriplets
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.push import Push
from arxiv_embed.schema.shared import Shared
from arxiv_embed.schema.split import Split
from arxiv_embed.training.data import train_kinds
from arxiv_embed.training.losses import COUNT_OF_KIND


class Params(Section):
    shared: Shared
    download: Download
    clean: Clean
    split: Split
    make_triplets: MakeTriplets
    model: Model
    embed_base: EmbedBase
    finetune: Finetune
    evaluate: Evaluate
    push: Push

    @model_validator(mode="after")
    def _mined_pairs(self) -> Params:
        if self.finetune.hard_negatives.weight and not self.make_triplets.same_label_pairs_per_split.train:
            raise ValueError("finetune.hard_negatives.weight > 0 mines negatives for make_triplets' same_label train pairs: "
                             "set make_triplets.same_label_pairs_per_split.train > 0, or finetune.hard_negatives.weight to 0")
        return self

    @model_validator(mode="after")
    def _counts_finetune_reads(self) -> Params:
        # A file finetune reads must not be made empty on purpose: found here, not after embed_base's encoding.
        needed = [(COUNT_OF_KIND[kind], "train", f"finetune trains on {kind}") for kind in train_kinds(self.finetune)
                  if kind in COUNT_OF_KIND]
        if self.finetune.mode == "full":
            needed.append(("triplets_per_split", "eval", "finetune.mode full evaluates every eval_steps on them"))
        for count, split, why in needed:
            if getattr(getattr(self.make_triplets, count), split) == 0:
                raise ValueError(f"make_triplets.{count}.{split} is 0, but {why}: set it above 0")
        # Fewer rows than one batch train nothing (finetune refuses them), where the params alone bound the rows: an
        # integer count is exact, and labels and title_abstract give a row a paper of the train sample.
        processes = self.finetune.full.nproc_per_node if self.finetune.mode == "full" else 1  # torchrun: a batch each
        batch = self.finetune.batch_size * processes
        for kind in self.finetune.train_data:
            if kind in COUNT_OF_KIND:
                knob, rows = f"make_triplets.{COUNT_OF_KIND[kind]}.train", getattr(self.make_triplets, COUNT_OF_KIND[kind]).train
                if type(rows) is not int:  # a number per paper, or 'all': the data decides
                    continue
            elif (rows := self.make_triplets.max_train_papers) is not None:
                knob = "make_triplets.max_train_papers"
            else:
                continue
            if 0 < rows < batch:
                each = f" x finetune.full.nproc_per_node={processes}" if processes > 1 else ""
                raise ValueError(f"{knob}={rows} gives finetune at most {rows} {kind} rows, fewer than one finetune.batch_size="
                                 f"{self.finetune.batch_size}{each}: raise it, or lower finetune.batch_size")
        return self

    @model_validator(mode="after")
    def _gated_triplet_kinds(self) -> Params:
        # The triplet lens reports accuracy_hard only when some test triplet has a hard negative: another label of the
        # anchor's archive. Fraction 0 asks for none; labels that are archives leave none to find.
        # (accuracy_random stays: at fraction 1 anchors with no hard candidate still fall back to random negatives.)
        gated = (self.push.gate.metric, *self.push.gate.headline_tolerances)
        if "triplet.accuracy_hard" in gated:
            if self.make_triplets.hard_negative_fraction == 0:
                why = f"make_triplets.hard_negative_fraction={self.make_triplets.hard_negative_fraction} (no hard negatives)"
            elif self.shared.label == "archive":
                why = "shared.label=archive (a hard negative is another label of the anchor's archive, and each archive is one label)"
            else:
                return self
            raise ValueError(f"push.gate names triplet.accuracy_hard, which evaluate does not report with {why}: "
                             "gate on triplet.accuracy or triplet.accuracy_random")
        return self


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params mapping; raise ParamsError naming each bad key."""
    return validate(Params, raw, source, whole=True)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate the whole params.yaml."""
    return parse_params(read_yaml(path), str(path))


def _check(stamp: str | None = None) -> None:
    load_params()
    print(f"{PARAMS_FILE}: ok")
    if stamp:  # the params_check stage's output: the same text every time, so a passing check reruns nothing after it
        from arxiv_embed.files import write_text

        write_text(stamp, f"{PARAMS_FILE}: valid\n")


if __name__ == "__main__":
    # `python -m arxiv_embed.params [--stamp FILE]` validates params.yaml on its own (`make check`, and the DAG's first
    # stage, params_check): a bad key is one line, exit 1.
    import argparse

    from arxiv_embed.errors import run

    parser = argparse.ArgumentParser(prog="python -m arxiv_embed.params", description="Validate the whole params.yaml.")
    parser.add_argument("--stamp", help="write this file when params.yaml is valid (the params_check stage's output)")
    stamp = parser.parse_args().stamp
    run(lambda: _check(stamp), "params_check" if stamp else "params", takes_arguments=True)
