"""The rollout stage: one RL step's batch as a composition of small named pieces.

A step asks for ``rollout.prompts_per_step`` groups. Each generation round takes the next prompts
from the resumable prompt iterator and then:

1. **sources** (``rollout.sources``) each return rows for those prompts: ``"policy"`` samples G
   responses per prompt (on-policy); ``"demonstrations"`` adds the prompts' teacher traces as rows
   (off-policy), whole or as a teacher prefix continued by the sampler (LUFFY's prefix mode);
2. **scoring**: every row is scored by the run's guarded reward runner (and DAPO's overlong
   shaping); a **baseline** (ReMax's greedy rollout, chosen by the advantage estimator) scores one
   greedy answer per prompt;
3. **filters** (``rollout.filters``; DAPO's ``algorithm.dynamic_sampling`` adds
   ``"nonconstant_groups"``) decide which groups are kept; rounds repeat until enough groups
   survive or ``algorithm.max_gen_rounds`` is reached.

Every row carries ``is_demonstration`` (bool ``[N]``) and ``off_policy`` (bool ``[N, T]``, the
tokens the policy did not sample), so ``prepare`` and ``update`` can treat teacher tokens without
an importance ratio.

A source or filter of your own is one function, named in the config by import path
(``rollout.sources=["policy", "mypkg.rollouts:my_source"]``); see :mod:`jaxrl_llm.train.experience.sources` and
:mod:`jaxrl_llm.train.experience.filters` for the signatures.
"""

from jaxrl_llm.train.experience.core import Round, collect, concat_rows, resolve
from jaxrl_llm.train.experience.filters import FILTERS
from jaxrl_llm.train.experience.sources import SOURCES

__all__ = ["FILTERS", "Round", "SOURCES", "collect", "concat_rows", "resolve"]
