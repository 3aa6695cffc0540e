"""The only part of normlab that knows both Hydra and Lightning: checks, builds, trains,
evaluates and predicts from configs, and reads and writes run directories."""
