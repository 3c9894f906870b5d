"""`python -m benchmarks [name ...] [--quick] [options]`: run benchmarks, print their tables and
write benchmarks/results/<name>.json. No name runs the everyday set (EVERYDAY, end_to_end last); the long ones
(LONG: the 2.7M-paper builds, and the dev files' quality searches, which need ../shared/data) run by name.

    python -m benchmarks clean_scale --quick       # 20 MB and 80 MB instead of 0.5 GB and 2 GB
    python -m benchmarks encoding repro
    python -m benchmarks faults                    # kill the tiny DAG at named points, rerun, compare
    python -m benchmarks quality                   # base vs fine-tuned with 95% intervals, both dev files
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

from benchmarks.common import SAMPLE_HELP, save, with_quick_sizes

MODULES = {"clean_scale": "clean_scale", "repro": "repro", "encoding": "encoding", "train": "train_throughput", "faults": "faults",
           "search_scale": "search_scale", "search_rebuild": "search_rebuild", "snapshot_scale": "snapshot_scale", "search_load": "search_load", "reuse_store": "reuse_store", "intervals": "intervals", "quality": "quality", "objectives": "objectives", "end_to_end": "end_to_end"}
# snapshot_scale and search_rebuild build snapshot-sized files (an hour or more, ~21 GB of disk); quality and
# objectives read the two dev files of ../shared/data, which a user's clone does not have.
LONG = ("snapshot_scale", "search_rebuild", "quality", "objectives")
EVERYDAY = [name for name in MODULES if name not in LONG]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {', '.join(MODULES)} (default: {', '.join(EVERYDAY)})")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try a benchmark in minutes (end_to_end: the shipped sample, make repro's run; faults, repro and objectives have none: the "
                        "first two run the tiny or the sample's DAG as it is, several minutes; objectives, its dev files whole)")
    parser.add_argument("--sample", type=Path, default=None, help=SAMPLE_HELP)
    modules = {name: importlib.import_module(f"benchmarks.{module}") for name, module in MODULES.items()}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    if unknown := set(args.names) - set(MODULES):
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}: choose from {', '.join(MODULES)}")
    for name in args.names or EVERYDAY:
        # --quick's sizes stand in for the defaults only: an option given on the command line is kept.
        module_args = with_quick_sizes(parser, argv, args, modules[name].QUICK) if args.quick else args
        save(modules[name].run(module_args))


if __name__ == "__main__":
    main()
