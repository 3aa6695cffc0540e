"""Re-test a finished run from its own saved config: `python eval.py run=<run dir>`.

`which=last` tests the last epoch instead of the best; `ckpt_path=<file>` tests one checkpoint
file of a run instead. key=value overrides (e.g. `data.eval_batch_size=500`) apply on top of
the run's config. Writes <run dir>/eval.json.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from normlab.runner.cli import exit_on_user_error, explain_unknown_keys
from normlab.runner.rundir import task_overrides

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    # Imported here, not at the top: Lightning takes seconds to import, and a mistyped
    # option should be reported before that. Imported after Hydra has set up logging,
    # Lightning's own lines also go to eval.log.
    from normlab.runner.evaluate import evaluate

    with exit_on_user_error():
        evaluate(cfg, task_overrides())


if __name__ == "__main__":
    with explain_unknown_keys(sys.argv[1:], CONFIG_DIR, "eval"):
        sys.exit(main())
