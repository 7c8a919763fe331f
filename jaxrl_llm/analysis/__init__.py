"""Analyses of finished (or running) training runs: update sparsity (:mod:`.sparsity`)."""
