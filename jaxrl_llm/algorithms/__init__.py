"""Algorithms (layer 4): each a frozen ``Config`` plus a pure ``update(state, batch)``.

Import a family module directly (``from jaxrl_llm.algorithms import sft``).
"""

from jaxrl_llm.algorithms import sft
from jaxrl_llm.algorithms.common import TrainState, guarded_apply, make_optimizer, tree_all_finite

__all__ = ["TrainState", "guarded_apply", "make_optimizer", "sft", "tree_all_finite"]
