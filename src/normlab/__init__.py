"""normlab: batch normalization and dropout, studied with PyTorch Lightning and Hydra."""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${pid:}` keeps run directories apart when two runs start in the same second. Registered on
# import so Hydra can resolve it wherever normlab is imported: the main process and the
# joblib launcher's workers (which reuse the main process's cached value, so a sweep keeps
# one directory).
if not OmegaConf.has_resolver("pid"):
    OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True)

# `${run_dir:...}` and `${config_subdir:...}`: where `resume=<run dir>` runs (conf/hydra).
from normlab.resume import register_resolvers

register_resolvers()
