"""Train and test one configuration: `python train.py model=cnn_bn_dropout data=digits`.

Sweeps: `python train.py -m model=cnn,cnn_bn seed=0,1,2`. See README.md for every option.
"""

import sys

import hydra
from omegaconf import DictConfig

from normlab.cli import exit_on_user_error
from normlab.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        results = train(cfg)
    # Returned for sweepers that optimize a metric (hparams_search=optuna).
    return results.get(cfg.get("optimized_metric", "val_acc_best"))


if __name__ == "__main__":
    sys.exit(main())
