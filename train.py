"""Train and test one configuration: `python train.py model=cnn_bn_dropout data=digits`.

Sweeps: `python train.py -m model=cnn,cnn_bn seed=0,1,2`. Continue an interrupted run or
sweep: `python train.py resume=<run dir or sweep dir>`. See docs/training.md for every option.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from normlab.runner.cli import exit_on_user_error, explain_unknown_keys, sigterm_as_interrupt
from normlab.runner.continue_sweep import sweep_command

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not at the top: Lightning takes seconds to import, and a mistyped
    # option should be reported before that.
    from normlab.runner.train import train

    with exit_on_user_error(), sigterm_as_interrupt():
        results = train(cfg)
    # Returned for sweepers that optimize a metric (hparams_search=optuna).
    return results.get(cfg.get("optimized_metric", "val_acc_best"))


if __name__ == "__main__":
    with exit_on_user_error():  # resume=<sweep dir>: the sweep's own command line, again
        sys.argv[1:] = sweep_command(sys.argv[1:], CONFIG_DIR)
    with explain_unknown_keys(sys.argv[1:], CONFIG_DIR, "train"):
        sys.exit(main())
