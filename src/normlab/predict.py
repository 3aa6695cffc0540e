"""Classify image files with a finished run: the `python -m normlab.predict` entry point.

    python -m normlab.predict run=<run dir> [which=best|last] [top=3] IMAGE [IMAGE ...]

`run=` is read by Hydra's override grammar, as eval.py reads it: a path with a space, a comma
or a non-ASCII letter goes in single quotes inside the shell's, "run='/data/my runs/x'".

`which=` picks the run's best (by validation accuracy, the default) or last checkpoint;
`top=` how many classes to print per image, most probable first. The code is in
normlab.runner.predict (`Predictor`, for use from Python).
"""

import sys

from normlab.runner.predict import main

if __name__ == "__main__":
    sys.exit(main())
