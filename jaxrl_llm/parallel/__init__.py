"""Mesh construction, logical-axis rules and sharding helpers (layer 2)."""

from jaxrl_llm.parallel.mesh import (DEFAULT_RULES, batch_sharding, batch_size_multiple,
                                     logical_axes_of, logical_to_spec, make_mesh, replicated,
                                     tree_shardings)

__all__ = ["DEFAULT_RULES", "batch_sharding", "batch_size_multiple", "logical_axes_of",
           "logical_to_spec", "make_mesh", "replicated", "tree_shardings"]
