"""The performance benchmark: `python -m normlab.bench` (or `make bench`).

Modules: `lesson` (the lesson's pipeline and loop, the baseline), `cifar_files` (a synthetic
CIFAR-10 in the real on-disk format), `probes` (epoch clocks and Lightning callbacks),
`suite` (the measurements), `report` (targets, table, bench.json).
"""
