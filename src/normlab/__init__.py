"""normlab: batch normalization and dropout, studied with PyTorch Lightning and Hydra.

From Python (a notebook): `normlab.train("model=cnn_bn", "data=digits")` trains like
`python train.py` and returns the results; `normlab.evaluate(run_dir)` re-tests a run
(normlab.runner.api, imported on first use: Lightning takes seconds to import).

Importing normlab registers the resolvers the configs use, so Hydra can resolve them wherever
normlab is imported: train.py, eval.py, tests, and the joblib launcher's worker processes.
"""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

_RESOLVERS = {
    # `${pid:}` keeps run directories apart when two runs start in the same second; cached, so
    # the joblib launcher's workers reuse the main process's value and a sweep keeps one folder.
    "pid": (lambda: os.getpid(), True),
    # `hydra.run.dir`: a resumed run's own directory (`resume=<run dir>`), or a new one. `~`
    # expanded here because Hydra does not expand it in output folders (normlab's checks and
    # locks do, normlab.files.absolute_path).
    "run_dir": (
        lambda resume, new_dir: os.path.expanduser(str(resume) if resume else str(new_dir)),
        False,
    ),
    # `hydra.output_subdir`: a resumed run, or a started job of a continued sweep, keeps the
    # `.hydra/` it was started with.
    "config_subdir": (lambda resume, output_dir: _config_subdir(resume, output_dir), False),
    # `${run_name:${name},${hydra.overrides.task}}`: `model-cnn_bn+seed-3` (normlab.runner.names).
    "run_name": (lambda name, overrides: _run_name(name, overrides), False),
    # conf/hydra/launcher/slurm.yaml: GPUs, CPUs and memory that follow the trainer.
    "slurm_gpus_per_node": (
        lambda accelerator, devices: _slurm().gpus_per_node(accelerator, devices),
        False,
    ),
    "slurm_cpus_per_task": (
        lambda accelerator, threads: _slurm().cpus_per_task(accelerator, threads),
        False,
    ),
    "slurm_mem_gb": (lambda accelerator, tasks: _slurm().mem_gb(accelerator, tasks), False),
    # conf/logger/mlflow.yaml, wandb.yaml: tags as MLflow wants them; W&B offline by default.
    "tracker_tags": (lambda tags: _trackers().tracker_tags(tags), False),
    "wandb_mode": (lambda: _trackers().wandb_mode(), False),
    # `optimizer.lr: ${linear_lr:0.01,${data.batch_size},32}`: 0.01 at batch 32, scaled linearly
    # with the batch (Goyal et al. 2017; Wu & He 2018 train GroupNorm vs BN this way).
    "linear_lr": (lambda base, batch, reference: _linear_lr(base, batch, reference), False),
}


def _config_subdir(resume, output_dir) -> str | None:
    if resume:
        return None
    continued = os.environ.get("NORMLAB_CONTINUE_SWEEP")  # normlab.runner.continue_sweep.ENV
    saved = os.path.join(str(output_dir), ".hydra", "config.yaml")
    return None if continued and os.path.isfile(saved) else ".hydra"


def _trackers():
    from normlab.training import trackers

    return trackers


def _slurm():
    from normlab.runner import slurm

    return slurm


def _linear_lr(base, batch, reference) -> float:
    from normlab.errors import ConfigError

    numbers = (base, batch, reference)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in numbers):
        raise ConfigError(
            f"${{linear_lr:{base},{batch},{reference}}}: needs three positive numbers: the "
            "learning rate at the reference batch size, the batch size, and the reference, "
            "e.g. optimizer.lr='${linear_lr:0.01,${data.batch_size},32}'."
        )
    return float(base) * float(batch) / float(reference)


def _run_name(name, overrides) -> str:
    from normlab.runner.names import run_name

    return run_name(name, list(overrides or ()))


for _name, (_resolver, _cached) in _RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver, use_cache=_cached)

__all__ = ["evaluate", "train"]


def __getattr__(name: str):
    if name in __all__:
        from normlab.runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'normlab' has no attribute {name!r}")
