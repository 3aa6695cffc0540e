"""`python -m normlab.predict run=<run dir> IMAGE [IMAGE ...]`: classify image files with a
finished run (see normlab.runner.predict)."""

import sys

from normlab.runner.predict import main

if __name__ == "__main__":
    sys.exit(main())
