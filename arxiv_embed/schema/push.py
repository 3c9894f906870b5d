"""params.yaml `push` (the push stage, which also reads what the model card describes)."""

from __future__ import annotations

import difflib
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from arxiv_embed.evaluation.headline import GATEABLE, METRICS as HEADLINE
from arxiv_embed.schema.base import Section, hub_repo_id
from arxiv_embed.schema.download import Download
from arxiv_embed.schema.finetune import Finetune
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


def _registry_name(name: str) -> str:
    # MLflow refuses '/', ':' and names that are no plain path segment ('.', '..x') only after the release is written;
    # a single quote would break push's registry filters.
    if not name.strip() or set(name) & set("/:'") or name == "." or name.startswith(".."):
        raise ValueError(f"{name!r} is not a registry model name: use a non-empty name without '/', ':', a single quote "
                         "a leading '..', or '.' alone")
    return name


# The Hub's license ids (huggingface.co/docs/hub/repositories-licenses, 2026): the card's `license` must be one, or the
# Hub refuses the upload, after the release is written and registered. A license not listed is `other`.
HUB_LICENSES = frozenset("""
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m afl-3.0
    artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0
    cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0
    cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0
    epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research
    intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa
    unlicense zlib pddl lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2
    llama3.3 llama4 gemma unknown other""".split())


def _hub_license(license_id: str) -> str:
    if license_id not in HUB_LICENSES:
        close = ", ".join(difflib.get_close_matches(license_id.lower(), sorted(HUB_LICENSES), n=3))
        raise ValueError(f"{license_id!r} is not a license id the Hugging Face Hub accepts"
                         f"{f' (did you mean {close}?)' if close else ''}; see "
                         "huggingface.co/docs/hub/repositories-licenses, or use 'other' for a license it does not list")
    return license_id


def _gateable(key: str) -> str:
    if key not in GATEABLE:
        close = difflib.get_close_matches(key, sorted(GATEABLE), n=1)
        by_lens: dict[str, list[str]] = {}
        for name in sorted(GATEABLE):
            by_lens.setdefault(name.split(".")[0], []).append(name.split(".", 1)[1])
        listed = "; ".join(f"{lens}.{{{', '.join(names)}}}" for lens, names in by_lens.items())
        raise ValueError(f"{key!r} is not a metric evaluate gives an interval{f' (did you mean {close[0]}?)' if close else ''}; "
                         f"the metrics are {listed}")
    return key


class Gate(Section):
    metric: Annotated[str, AfterValidator(_gateable)]
    tolerance: Annotated[float, Field(ge=0)]
    # "lens.metric" -> tolerance: one per headline metric, and any other metric to gate too.
    headline_tolerances: dict[Annotated[str, AfterValidator(_gateable)], Annotated[float, Field(ge=0)]]

    @model_validator(mode="after")
    def _every_headline_metric(self) -> Gate:
        # A headline key left out leaves that metric ungated: found here, before any training, not at push.
        if missing := [key for key in HEADLINE.values() if key not in self.headline_tolerances]:
            raise ValueError(f"push.gate.headline_tolerances has no tolerance for {', '.join(missing)}: add one per headline "
                             f"metric ({', '.join(HEADLINE.values())}; 0.0 = any loss outside the noise refuses)")
        return self


class Hub(Section):
    enabled: bool
    repo_id: Annotated[str | None, AfterValidator(hub_repo_id)]
    private: bool

    @model_validator(mode="after")
    def _repo(self) -> Hub:
        if self.enabled and not self.repo_id:
            raise ValueError("push.hub.enabled is true but push.hub.repo_id is empty: set it to 'user/model-name'")
        return self


class Push(Section):
    license: Annotated[str, AfterValidator(_hub_license)]
    registry_model_name: Annotated[str, AfterValidator(_registry_name)]
    gate: Gate
    hub: Hub


class PushParams(Section):
    shared: Shared
    download: Download
    model: Model
    finetune: Finetune
    push: Push
