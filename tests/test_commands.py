"""Commands normlab prints for the user to paste (resume hints, eval and predict suggestions):
pasted back through a real shell (bash -c), each gives Hydra exactly the path it names, for
paths with spaces, quotes, commas, `$`, backslashes and non-ASCII letters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from finished_run import digits_run

from normlab.errors import ConfigError
from normlab.runner.commands import command, override
from normlab.runner.runstate import parse_run

AWKWARD = [
    "/tmp/x/lo gs ü/runs/2026-01-31_12-00-00_1",  # the path
    "/data/it's mine/run",
    '/data/say "hi"/run',
    "/data/a,b/c=d",
    "/data/$HOME/`id`/run",
    "/data/${oc.env:HOME}/run",  # an OmegaConf interpolation, to be kept as text
    "/data/back\\slash\\",
    "/data/!bang/run",
    "/data/日本語/[x]{y}(z); rm -rf x",
    "/data/a+b@c/run-1.5",
    "123",
    "true",
    "logs/runs/2026-01-31_12-00-00_model-cnn_bn+seed-3_1234",
]

# A Hydra app that prints the `run` it composed: what eval.py's config would hold.
ECHO_APP = """
import json, hydra
@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    print(json.dumps(cfg.run))
main()
"""


def paste(commands: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the commands as bash runs what a user pastes, `python` being this interpreter and
    `python <file>.py` a file of the repository (as from its root)."""
    shell_python = (
        'python() { if [ "$1" = -m ]; then "$PY" "$@"; '
        'else script=$1; shift; "$PY" "$REPO/$script" "$@"; fi; }'
    )
    full_env = {
        **os.environ,
        "PY": sys.executable,
        "REPO": str(REPO),
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    script = "\n".join([shell_python, *commands])
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )


def test_pasted_run_overrides_reach_hydra_unchanged(tmp_path):
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    pasted = [
        command("echo_app.py", "hydra.run.dir=.", "hydra.output_subdir=null", **{"+run": path})
        for path in AWKWARD
    ]
    proc = paste(pasted, cwd=tmp_path, env={"REPO": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads(line) for line in proc.stdout.splitlines()] == AWKWARD


def test_plain_paths_stay_plain_and_others_are_quoted():
    assert override("run", "logs/runs/x_model-cnn+seed-3") == "run=logs/runs/x_model-cnn+seed-3"
    assert override("run", "/tmp/x/lo gs ü/r") == "\"run='/tmp/x/lo gs ü/r'\""
    assert command("train.py", resume="/a b") == "python train.py \"resume='/a b'\""


@pytest.mark.parametrize("path", AWKWARD)
def test_predict_reads_run_as_eval_py_does(path):
    # The word the shell hands over (after its own quotes are gone) is read by Hydra's grammar.
    word = subprocess.run(
        ["bash", "-c", f"printf %s {override('run', path)}"], capture_output=True, text=True
    ).stdout
    assert parse_run(word.removeprefix("run=")) == path


def test_a_run_value_hydra_cannot_read_is_refused_with_the_quoted_form():
    with pytest.raises(ConfigError) as err:
        parse_run("/tmp/x/lo gs ü/runs")
    message = str(err.value)
    assert message.startswith("run=/tmp/x/lo gs ü/runs: not a value of Hydra's override grammar")
    assert "\"run='/tmp/x/lo gs ü/runs'\"" in message


@pytest.mark.slow
def test_the_retest_hint_of_a_completed_run_pastes_back(tmp_path_factory, tmp_path):
    """The real messages, the real eval.py: a finished run in a folder named with a space, a
    quote and non-ASCII letters; train.py's hint to re-test it, pasted, re-tests it."""
    run = digits_run(tmp_path_factory)
    awkward = tmp_path / "lo gs ü" / "it's, $x"
    shutil.copytree(run.run_dir, awkward, ignore=shutil.ignore_patterns("tensorboard"))
    proc = paste([command("train.py", resume=awkward)], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = " ".join(proc.stderr.split())
    hint = message.split("Re-test it with ")[1].split(", or start")[0]
    assert hint.startswith("python eval.py ") and str(awkward) not in hint  # quoted
    proc = paste([hint], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((awkward / "eval.json").read_text())
    assert result["run"] == str(awkward) and result["test_acc"] == run.results["test_acc"]
