"""SLURM: what `hydra/launcher=slurm` asks for, and runs on a real cluster.

The in-process tests compose the launcher config and render the sbatch script submitit would
write. The tests marked `slurm` submit to a real cluster (`make test-slurm` starts a one-node
one with tools/slurm/local_cluster.sh): a two-job sweep, a two-task DDP job and a job
preempted with `scancel --signal=TERM`, then resumed. `make test` deselects them; run alone
without a cluster answering, they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from hydra.utils import instantiate

from normlab.runner.slurm import job_record

DEFAULT_SLURM_CONF = "/tmp/normlab-slurm/slurm.conf"  # where local_cluster.sh writes it
# The test cluster is one small node: each task asks for one CPU and 1 GB (the defaults
# follow the trainer: 2 CPUs and 4 GB per CPU task).
SMALL = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
QUICK = ["data=digits", "trainer.max_epochs=1"]


def launcher_params(compose_cfg, *overrides: str) -> dict:
    cfg = compose_cfg(["hydra/launcher=slurm", *overrides])
    return instantiate(cfg.hydra.launcher).params  # the real submitit plugin's parameters


def sbatch_script(params: dict, folder: Path) -> str:
    """The sbatch script submitit writes for these launcher parameters."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    names = SlurmExecutor._equivalence_dict()
    keys = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task")
    resources = {names.get(k, k): params[k] for k in keys}
    resources["mem"] = f"{params['mem_gb']}GB"  # as SlurmExecutor.update_parameters converts it
    return _make_sbatch_string(command="python train.py", folder=folder, **resources)


def test_a_cpu_trainer_asks_slurm_for_no_gpu(compose_cfg, tmp_path):
    params = launcher_params(compose_cfg, "trainer=cpu")
    script = sbatch_script(params, tmp_path)
    assert "gpus" not in script and "gres" not in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=4GB" in script
    # trainer=ddp_cpu: two CPU tasks on the node, memory for both.
    script = sbatch_script(launcher_params(compose_cfg, "trainer=ddp_cpu"), tmp_path)
    assert "gpus" not in script and "#SBATCH --ntasks-per-node=2" in script
    assert "#SBATCH --mem=8GB" in script


def test_gpu_trainers_ask_for_their_devices_and_overrides_win(compose_cfg, tmp_path):
    params = launcher_params(compose_cfg, "trainer=gpu")
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem_gb"]) == (1, 8, 32)
    params = launcher_params(compose_cfg, "trainer=ddp", "trainer.devices=4")
    assert "#SBATCH --gpus-per-node=4" in sbatch_script(params, tmp_path)
    assert params["mem_gb"] == 4 * 32
    # threads=N sets the CPUs a task asks for; hydra.launcher.* overrides anything.
    assert launcher_params(compose_cfg, "trainer=cpu", "threads=6")["cpus_per_task"] == 6
    params = launcher_params(compose_cfg, "trainer=gpu", *SMALL, "hydra.launcher.gpus_per_node=2")
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem_gb"]) == (2, 1, 1)


def test_job_record_names_the_job_as_scancel_does():
    assert job_record({}) == {}
    assert job_record({"SLURM_JOB_ID": "41"}) == {"slurm_job_id": "41"}
    array_job = {"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "2"}
    assert job_record(array_job) == {"slurm_job_id": "41_2", "slurm_array_index": 2}


# ---- on a real cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_env() -> dict:
    """The environment that reaches the cluster (SLURM_CONF set), or a skip saying why not."""
    conf = os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF
    if shutil.which("srun") is None or not Path(conf).exists():
        pytest.skip(f"no SLURM cluster (srun, {conf}): tools/slurm/local_cluster.sh start")
    env = {**os.environ, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Jobs start in other folders: a relative PYTHONPATH (PYTHONPATH=src) would not reach them.
    paths = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    probe = ["srun", "-N1", "-n1", "-t", "1", "--quiet", "true"]
    try:
        answered = subprocess.run(probe, env=env, capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    if not answered:
        pytest.skip(f"the SLURM cluster of {conf} does not answer srun")
    return env


def start_sweep(sweep_dir: Path, *overrides: str, env: dict) -> subprocess.Popen:
    """`python train.py -m hydra/launcher=slurm ...`: submits, waits for the jobs, reports."""
    command = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=slurm", *SMALL]
    command += [f"hydra.sweep.dir={sweep_dir}", f"paths.data_dir={sweep_dir.parent / 'data'}"]
    return subprocess.Popen(
        [*command, *overrides],
        cwd=sweep_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def slurm_sweeps(slurm_env, tmp_path_factory) -> dict:
    """Submitted together, scheduled by SLURM: a two-job CPU sweep and a two-task DDP job."""
    root = tmp_path_factory.mktemp("slurm")
    procs = {
        "sweep": start_sweep(root / "sweep", *QUICK, "trainer=cpu", "seed=0,1", env=slurm_env),
        "ddp": start_sweep(root / "ddp", *QUICK, "trainer=ddp_cpu", env=slurm_env),
    }
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name][-3000:]
    return {"root": root, "outputs": outputs}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_job_sweep_runs_as_a_slurm_array_and_records_its_jobs(slurm_sweeps):
    sweep = slurm_sweeps["root"] / "sweep"
    jobs = [results(sweep / str(n)) for n in (0, 1)]
    assert [job["status"] for job in jobs] == ["completed", "completed"]
    assert all(job["test_acc"] > 0.5 for job in jobs)
    # One array, one index per job: the ids scancel and squeue take.
    array_id = jobs[0]["slurm_job_id"].split("_")[0]
    assert [job["slurm_array_index"] for job in jobs] == [0, 1]
    assert [job["slurm_job_id"] for job in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "gpus" not in script.read_text() and "--cpus-per-task=1" in script.read_text()
    assert (sweep / "summary.md").exists()  # the sweep's report, as for a local sweep


@pytest.mark.slow
@pytest.mark.slurm
def test_ddp_under_slurm_uses_the_tasks_as_ranks_without_relaunching(slurm_sweeps):
    job_dir = slurm_sweeps["root"] / "ddp"
    record = results(job_dir / "0")
    assert record["status"] == "completed" and record["test_acc"] > 0.5
    assert record["slurm_job_id"]
    # SLURM started both tasks (one log each), both finished; Lightning joined them as ranks
    # 0 and 1 of 2 (both write the job's train.log) through its SLURMEnvironment.
    task_logs = sorted((job_dir / ".submitit" / record["slurm_job_id"]).glob("*_log.out"))
    assert len(task_logs) == 2
    for rank, log in enumerate(task_logs):
        assert f"global_rank={rank}(2)" in log.read_text()
        assert "Job completed successfully" in log.read_text()
    train_log = (job_dir / "0" / "train.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in train_log and "GLOBAL_RANK: 1, MEMBER: 2/2" in train_log
    assert "Starting with 2 processes" in train_log
    assert "SLURM auto-requeueing enabled" in train_log  # Lightning's SLURMEnvironment


def srun_train(job_name: str, *overrides: str, run_dir: Path, env: dict) -> subprocess.Popen:
    """`srun python train.py ...`: one run as one SLURM job, as a batch script would."""
    command = ["srun", "-J", job_name, "-N1", "-n1", "-c1", "--mem=1G", "-t", "15"]
    command += [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [*command, f"paths.data_dir={run_dir.parent / 'data'}", *overrides],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.slurm
def test_a_preempted_job_is_marked_interrupted_and_resumes(slurm_env, tmp_path):
    run_dir = tmp_path / "preempted"
    job_name = f"normlab-preempt-{os.getpid()}"
    epochs = 10
    job = srun_train(
        job_name, "data=digits", "trainer=cpu", f"trainer.max_epochs={epochs}",
        run_dir=run_dir, env=slurm_env,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # a file to appear: nothing to block on
    assert last.exists(), job.communicate()[0][-3000:]
    queue = ["squeue", "-h", "-n", job_name, "-o", "%i"]
    job_id = subprocess.run(queue, env=slurm_env, capture_output=True, text=True).stdout.strip()
    assert job_id.isdigit(), job_id
    # What a preemption (or the approach of the time limit) sends: TERM to the job's tasks.
    subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm_env, check=True)
    output = job.communicate(timeout=120)[0]
    stopped = results(run_dir)
    assert stopped["status"] == "interrupted", output[-3000:]
    assert stopped["slurm_job_id"] == job_id
    assert 1 <= stopped["epochs_completed"] < epochs
    assert f"resume={run_dir}" in output

    resumed_job = srun_train(
        f"{job_name}-resume", f"resume={run_dir}", run_dir=run_dir, env=slurm_env
    )
    output = resumed_job.communicate(timeout=300)[0]
    assert resumed_job.returncode == 0, output[-3000:]
    finished = results(run_dir)
    assert finished["status"] == "completed" and finished["epochs_completed"] == epochs
    assert finished["history"][: len(stopped["history"])] == stopped["history"]
    assert finished["slurm_job_id"] not in ("", job_id)
