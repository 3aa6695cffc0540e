"""Re-test a finished run from its own saved config: `python eval.py run=<run dir>`.

`which=last` tests the last epoch instead of the best; key=value overrides (e.g.
`data.eval_batch_size=500`) apply on top of the run's config. Writes <run dir>/eval.json.
"""

import sys

import hydra
from omegaconf import DictConfig

from normlab.runner.cli import exit_on_user_error
from normlab.runner.evaluate import evaluate
from normlab.runner.rundir import task_overrides


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg, task_overrides())


if __name__ == "__main__":
    sys.exit(main())
