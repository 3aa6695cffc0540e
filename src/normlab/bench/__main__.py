"""`python -m normlab.bench`: normlab against the lesson's pipeline and loop, a plain PyTorch
loop and a bare import; prints a table and writes bench.json. See normlab/bench/suite.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from normlab.bench.cifar_files import write_cifar10
from normlab.bench.processes import measure_busy_threads, measure_startup_and_memory
from normlab.bench.report import build_rows, format_table, machine, to_json
from normlab.bench.suite import (
    QUICK,
    Sizes,
    checked_repo,
    compare_loaders,
    compare_training,
)

# The parts `--only` can name, in the order they are measured.
PARTS = ("loader", "training", "startup", "threads")


def parts(text: str) -> list[str]:
    """`--only loader,startup`: the parts named, each one of PARTS."""
    named = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in named if part not in PARTS]
    if unknown or not named:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name one or more of {', '.join(PARTS)}, separated by commas "
            f"(unknown: {', '.join(unknown) or 'none given'})"
        )
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normlab.bench", description=__doc__)
    parser.add_argument("--output", default="bench.json", help="where to write the results")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the code paths, not speed"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in this process (default: torch's, one per core). On a machine "
        "busy with other work, 1 avoids threads spinning while they wait for each other",
    )
    parser.add_argument("--repeats", type=int, default=None, help="alternating runs per side")
    parser.add_argument(
        "--only",
        type=parts,
        default=list(PARTS),
        help=f"comma-separated parts to measure: {', '.join(PARTS)} (default all)",
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("."), help="repository root (conf/, train.py)"
    )
    args = parser.parse_args(argv)
    repo = checked_repo(args.repo)
    sizes = QUICK if args.quick else Sizes()
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="normlab-bench-") as tmp:
        workdir = Path(tmp)
        data_root = write_cifar10(workdir / "data", sizes.train_images, sizes.test_images)
        results = {"machine": machine()}
        for name, measure in (
            ("loader", lambda: compare_loaders(data_root, sizes, repo)),
            ("training", lambda: compare_training(data_root, sizes, workdir, repo)),
            ("startup", lambda: measure_startup_and_memory(data_root, sizes, workdir, repo)),
            ("threads", lambda: measure_busy_threads(sizes, workdir, repo)),
        ):
            if name not in args.only:
                continue
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = measure()
    results["bench_wall_s"] = time.perf_counter() - started
    rows = build_rows(results)
    print(format_table(rows, results, sizes))
    Path(args.output).write_text(json.dumps(to_json(results, rows, sizes), indent=2) + "\n")
    print(f"results in {args.output} ({results['bench_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
