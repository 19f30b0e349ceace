"""Training: `lm.train.loop.train(config, workdir)` runs an experiment config.

Nothing is imported here, so that `lm.train.<module>` costs only what that module needs.
"""
