"""normlab from Python (a notebook, a script): the configs and the runner of train.py / eval.py.

    import normlab
    results = normlab.train("model=cnn_bn", "data=digits", seed=1)
    results["test_acc"], results["history"], results["run_dir"]
    normlab.evaluate(results["run_dir"], which="last")

`normlab.train` is `python train.py <overrides>` started from the project root (the folder
holding `conf/`): the same composition, the same checks before anything is written, the same
run directory under `logs/runs/` (results.json, checkpoints, TensorBoard, `.hydra/`,
train.log). A mistake raises normlab's error (a `NormlabError` whose message names the fix)
instead of exiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError

CONFIG_ENV = "NORMLAB_CONFIG_DIR"


def find_config_dir(config_dir: str | Path | None = None) -> Path:
    """The `conf/` folder to compose from: `config_dir` if given, else `$NORMLAB_CONFIG_DIR`,
    else `conf/` in the current directory or the nearest parent that has `conf/train.yaml` (so a
    notebook in `notebooks/` finds the repository's configs)."""
    given = config_dir or os.environ.get(CONFIG_ENV)
    if given:
        path = Path(given).expanduser().resolve()
        if not (path / "train.yaml").is_file():
            source = "config_dir" if config_dir else f"${CONFIG_ENV}"
            raise ConfigError(
                f"{source}={given} holds no train.yaml: pass the conf/ folder of the normlab "
                "repository, e.g. config_dir='path/to/normlab/conf'."
            )
        return path
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "train.yaml").is_file():
            return folder / "conf"
    raise ConfigError(
        f"no conf/train.yaml in {here} or any folder above it: start Python inside the normlab "
        f"repository, or pass config_dir='path/to/normlab/conf' (or set ${CONFIG_ENV})."
    )


def as_override(key: str, value: Any) -> str:
    """`key=value` in Hydra's override syntax: True -> true, None -> null, [1, 2] -> [1,2]."""
    return f"{key}={_value(value)}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def train(
    *overrides: str,
    config_dir: str | Path | None = None,
    config_name: str = "train",
    **options: Any,
) -> dict[str, Any]:
    """Train and test one configuration, exactly as `python train.py <overrides>` would.

    Args:
        overrides: Hydra overrides as on the command line: "model=cnn_bn", "data=digits",
            "trainer.max_epochs=3", "model/norm=group".
        config_dir: the `conf/` folder; by default found from the current directory upwards.
        config_name: the main config in it.
        options: more overrides as keywords: `seed=1`, `compile=True`; dotted keys through a
            dict, `**{"optimizer.lr": 0.01}`.

    Returns:
        The run's results (what results.json holds: status, val_acc_best, test_acc, history,
        ...) plus `run_dir`, the absolute path of the run directory.

    Raises:
        NormlabError: a setting that cannot work (the message names the fix); nothing is
            written when the checks before the run find it.
    """
    overrides_list = [*overrides, *(as_override(k, v) for k, v in options.items())]
    conf = find_config_dir(config_dir)
    _refuse_sweeps(overrides_list)
    with _project_root(conf.parent), _hydra(conf) as hydra:
        from hydra.types import RunMode

        from normlab.runner.preflight import check_single_run, was_checked
        from normlab.runner.rundir import release_folder

        cfg = _compose(hydra, conf, config_name, overrides_list, RunMode.RUN)
        cfg.hydra.mode = RunMode.RUN
        # What the Preflight callback does for train.py, raising instead of exiting: the
        # checks, then the run directory created and locked (Preflight then stands aside).
        check_single_run(cfg)
        run_dir = Path(str(cfg.hydra.run.dir))
        try:
            results = _run(hydra, cfg, config_name)
        finally:
            release_folder(run_dir)  # also when Hydra failed before the run could
            was_checked(run_dir, forget=True)
    return results


def evaluate(
    run_dir: str | Path,
    *overrides: str,
    which: str = "best",
    config_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Re-test a finished run with its own saved config, as `python eval.py run=<run_dir>`.

    Args:
        run_dir: the run's directory (`results["run_dir"]` of `normlab.train`).
        overrides: applied on top of the run's config, e.g. "data.eval_batch_size=500".
        which: "best" (the checkpoint results.json's test_acc used) or "last".
        config_dir: the `conf/` folder; by default found from the current directory upwards.

    Returns:
        eval.json's contents (also written into the run directory).

    Raises:
        NormlabError: a run directory, checkpoint or setting that cannot work.
    """
    from hydra.types import RunMode
    from omegaconf import open_dict

    from normlab.runner.commands import hydra_value

    conf = find_config_dir(config_dir)
    run_dir = Path(run_dir).expanduser().resolve()
    _refuse_sweeps(list(overrides))
    with _project_root(conf.parent):
        with _hydra(conf) as hydra:
            # Quoted for Hydra's grammar: a folder with a space or a comma is one value.
            run = f"run={hydra_value(run_dir)}"
            cfg = _compose(hydra, conf, "eval", [run, f"which={which}", *overrides], RunMode.RUN)
        with open_dict(cfg):
            del cfg["hydra"]  # eval.py's own log folder is not needed: the result is eval.json
        from normlab.runner.evaluate import evaluate as evaluate_run

        # Inside the project root, as the run trained: its saved relative paths (data.root
        # ./data/...) mean the same folders.
        return evaluate_run(cfg, list(overrides))


def _refuse_sweeps(overrides: Sequence[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(o in ("-m", "--multirun") for o in overrides):
        raise ConfigError(_SWEEP_HINT.format(override="--multirun"))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(f"{err}") from None
    for override in parsed:
        if override.is_sweep_override():
            raise ConfigError(_SWEEP_HINT.format(override=override.input_line))


_SWEEP_HINT = (
    "{override}: normlab.train runs one configuration. Loop over the values in Python "
    "(for lr in (0.01, 0.1): normlab.train(f'optimizer.lr={{lr}}')), or run the sweep from "
    "the shell: python train.py -m {override}"
)


@contextlib.contextmanager
def _project_root(root: Path) -> Iterator[None]:
    """Work from the project root while the run lasts, as train.py started there would: the
    configs' relative paths (logs/, data/) mean the same from a notebook in notebooks/."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _hydra(conf: Path) -> Iterator[Any]:
    """Hydra initialized on `conf` (named like train.py's job), cleared afterwards."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import normlab  # noqa: F401 - registers the resolvers the configs use

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), job_name="train", version_base="1.3"):
            yield GlobalHydra.instance().hydra
    finally:
        GlobalHydra.instance().clear()


def _compose(hydra: Any, conf: Path, config_name: str, overrides: list[str], mode: Any):
    """The composed config with its `hydra` node; Hydra's refusals as normlab's ConfigError,
    with the did-you-mean hints train.py prints."""
    from hydra.errors import HydraException

    try:
        return hydra.compose_config(
            config_name, overrides, run_mode=mode, with_log_configuration=False
        )
    except HydraException as err:
        from normlab.runner.hints import unknown_override_hints

        hints = unknown_override_hints(overrides, conf, config_name)
        # Hydra's own message, less its search path (internals) and its advice to add a
        # mistyped key with `+`, which the hints replace.
        message = "\n".join(hints) if hints else str(err).split("Config search path")[0].strip()
        raise ConfigError(message) from None


def _run(hydra: Any, cfg: DictConfig, config_name: str) -> dict[str, Any]:
    """What Hydra's own `run` does after composing (output dir, `.hydra/`, logging to the
    console and train.log, callbacks), with the task raising instead of exiting."""
    # Private: Hydra has no public way to run a composed config's callbacks (Preflight, the
    # sweep report) outside hydra.main; run_job below takes them as this object.
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    from normlab.runner.train import train as train_run

    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=config_name)
    output: dict[str, Any] = {}

    def task(task_cfg: DictConfig) -> Any:
        results = train_run(task_cfg)
        output["run_dir"] = str(Path(task_cfg.paths.output_dir).resolve())
        return results

    try:
        ret = run_job(
            hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
            task_function=task,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
        callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
        results = dict(ret.return_value)  # re-raises the run's exception
    finally:
        _close_run_logs(cfg)
    results["run_dir"] = output["run_dir"]
    return results


def _close_run_logs(cfg: DictConfig) -> None:
    """Stop writing the notebook's later log lines into the finished run's train.log."""
    root = logging.getLogger()
    output_dir = OmegaConf.select(cfg, "hydra.runtime.output_dir", throw_on_missing=False)
    if not output_dir or output_dir == "???":
        return
    output_dir = str(Path(output_dir).resolve())
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and str(filename).startswith(output_dir):
            root.removeHandler(handler)
            handler.close()
