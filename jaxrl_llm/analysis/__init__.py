"""Analyses of finished (or running) training runs: update sparsity (:mod:`.sparsity`), the
entropy–reward law (:mod:`.entropy`), overlaid curves of several runs (:mod:`.compare`) and a
run's one-page HTML report (:mod:`.report`)."""
