"""The measurements of `python -m normlab.bench` that run in child processes: start-up time
and memory of `python train.py` beside a bare import, and training under a busy machine with
each thread setting (see `suite` for how comparisons are made)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from normlab.bench.suite import SPINNER, Sizes, data_overrides, run_child, thread_settings

BARE_IMPORT = "import torch, lightning, hydra"
# The bare import, reporting when it is done as FirstStepProbe reports the first step: timed
# to the end of the process it would also count the interpreter's exit (~0.3 s with torch).
BARE_IMPORT_PROBE = f"""{BARE_IMPORT}
import json, resource, sys, time
usage = resource.getrusage(resource.RUSAGE_SELF)
done = {{"time": time.time(), "cpu_s": usage.ru_utime + usage.ru_stime}}
open(sys.argv[1], "w").write(json.dumps(done))
"""


def measure_startup_and_memory(
    data_root: Path, sizes: Sizes, workdir: Path, repo: Path
) -> dict[str, Any]:
    """Seconds from `python train.py` to its first training step, beside a bare
    `import torch, lightning, hydra`, each in a fresh process; and the peak resident memory
    of that run: CIFAR-10-sized data (50k/10k), a short epoch, validation and test."""
    bare, startup, peak_rss, bare_rss, bare_cpu, startup_cpu = [], [], [], [], [], []
    for repeat in range(sizes.repeats):
        probe = workdir / f"import_done_{repeat}"
        command = [sys.executable, "-c", BARE_IMPORT_PROBE, str(probe)]
        child = run_child(command, workdir / f"bare_{repeat}.json", repo)
        done = json.loads(probe.read_text())
        bare.append(done["time"] - child["started"])
        bare_cpu.append(done["cpu_s"])
        bare_rss.append(child["peak_rss_mb"])
        probe = workdir / f"first_step_{repeat}"
        command = [
            sys.executable,
            str(repo / "train.py"),
            *data_overrides(data_root, 128, sizes),
            f"hydra.run.dir={workdir / f'startup_run_{repeat}'}",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={sizes.memory_train_steps}",
            "+callbacks.bench_first_step._target_=normlab.bench.probes.FirstStepProbe",
            f"+callbacks.bench_first_step.path={probe}",
        ]
        child = run_child(command, workdir / f"train_{repeat}.json", repo)
        first_step = json.loads(probe.read_text())
        startup.append(first_step["time"] - child["started"])
        startup_cpu.append(first_step["cpu_s"])
        peak_rss.append(child["peak_rss_mb"])
    return {
        "bare_import_s": min(bare),
        "train_py_to_first_step_s": min(startup),
        "startup_over_import_s": min(startup) - min(bare),
        "bare_import_cpu_s": min(bare_cpu),
        "train_py_to_first_step_cpu_s": min(startup_cpu),
        "startup_over_import_cpu_s": min(startup_cpu) - min(bare_cpu),
        "peak_rss_mb": max(peak_rss),
        "bare_import_peak_rss_mb": max(bare_rss),
    }


# Runs a command and reports its wall time and peak RSS. It runs in a small interpreter of its
# own because a child's peak RSS (wait4's ru_maxrss) counts the address space it was forked
# from: forked from the benchmark process, which holds datasets, every child would "use" that.
def measure_busy_threads(sizes: Sizes, workdir: Path, repo: Path) -> dict[str, Any]:
    """`python train.py data=digits` while a background process (started here) keeps one core
    spinning: the run with default settings against each manual thread setting, alternating,
    best of `repeats`. Compared by training time (the epochs' `time/epoch_s` in results.json,
    validation included); wall time, start-up included, is reported beside it."""
    settings = thread_settings(repo, sizes.threads_manual)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in settings}
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
    try:
        for repeat in range(sizes.repeats):
            for i, (label, overrides, env) in enumerate(settings):
                run_dir = workdir / f"threads_{repeat}_{i}"
                command = [
                    sys.executable,
                    str(repo / "train.py"),
                    "data=digits",
                    f"trainer.max_epochs={sizes.threads_epochs}",
                    f"hydra.run.dir={run_dir}",
                    *overrides,
                ]
                child = run_child(command, workdir / f"threads_{repeat}_{i}.json", repo, env)
                results = json.loads((run_dir / "results.json").read_text())
                epochs = [row["time/epoch_s"] for row in results["history"]]
                runs[label].append({"train_s": sum(epochs), "wall_s": child["seconds"]})
    finally:
        spinner.kill()
        spinner.wait()
    best_runs = {label: min(r, key=lambda run: run["train_s"]) for label, r in runs.items()}
    default = best_runs.pop("default")
    manual_label = min(best_runs, key=lambda label: best_runs[label]["train_s"])
    return {
        "epochs": sizes.threads_epochs,
        "default": default,
        "manual": best_runs,
        "best_manual": manual_label,
        "ratio": default["train_s"] / best_runs[manual_label]["train_s"],
    }
