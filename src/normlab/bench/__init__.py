"""The performance benchmark: `python -m normlab.bench` (or `make bench`).

Modules: `lesson` (the lesson's pipeline and loop, the baseline), `cifar_files` (a synthetic
CIFAR-10 in the real on-disk format), `probes` (epoch clocks and Lightning callbacks),
`suite` (the measurements), `report` (targets, table, bench.json), `diagnostics` (what the
TensorBoard diagnostics cost: `python -m normlab.bench.diagnostics`). Run from the
repository root, or pass `--repo`: the configs and `train.py` measured are that repository's.
"""
