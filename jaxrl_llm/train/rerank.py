"""Best-of-N reranking with a learned scorer (``jaxrl-llm eval RUN --best-of N --scorer rm:RUN``;
docs/algorithms.md §18).

For every held-out prompt the policy answers greedily once and samples N solutions (temperature
as the run samples, a fixed key); the run's verifier (``reward.accuracy``) judges each. Reported,
all as accuracy over the prompts:

* ``greedy`` -- the greedy answer;
* ``sample`` -- one sample (the mean over the N: pass@1 at the sampling temperature);
* ``majority_vote`` -- the most frequent final answer among the N (self-consistency; ties go to
  the answer seen first), judged through a sample that gave it;
* ``best_of_n`` -- the sample the scorer rates highest (first on ties);
* ``pass_at_n`` -- some sample is right (the ceiling of any reranker).

The scorer is any ``fn(prompts, completions) -> float[B]``: an outcome / process reward model or
a Bradley–Terry reward model run (:func:`jaxrl_llm.rewards.learned.reward_function`).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import jax
import numpy as np
from jaxrl_llm.parallel.distributed import device_get


def answer_key(text: str, accuracy: str) -> str:
  """What majority voting compares: the final answer for the reasoning verifiers (the integer
  after the last ``Answer:``), else the whitespace-stripped completion."""
  if accuracy in ("final_answer", "final_answer_partial"):
    from jaxrl_llm.data.reasoning import final_answer

    value = final_answer(text)
    return "" if value is None else str(value)
  return text.strip()


def majority_pick(keys: list[str]) -> int:
  """Index of the first sample whose key is the most frequent (empty keys never win unless all
  are empty)."""
  counts = collections.Counter(k for k in keys if k)
  if not counts:
    return 0
  best = max(counts.values())
  return next(i for i, k in enumerate(keys) if k and counts[k] == best)


def best_of_n(setup, params, scorer: Callable | dict[str, Callable], split: str, *, n: int = 8,
              limit: int = 0, seed: int = 0, batch_prompts: int = 16) -> dict[str, Any]:
  """The accuracies of the module doc on ``split`` (``limit`` prompts; 0 = all).

  Args:
    setup: an RL setup of the policy's run (sampler, splits, verifier, greedy decode).
    scorer: ``fn(prompts, completions) -> float[B]``, or several by name (one set of samples
      reranked by each: ``best_of_n/<name>`` instead of ``best_of_n``).
  """
  scorers = scorer if isinstance(scorer, dict) else {"": scorer}
  from jaxrl_llm.rewards import RewardRunner
  from jaxrl_llm.rollout.sampler import pad_prompts
  from jaxrl_llm.train.evaluate import decode_texts

  cfg = setup.config
  name = cfg.reward.accuracy
  spec = next((s for s in setup.rewards.specs if s.name == name), None)
  if spec is None:
    raise ValueError("best-of-N needs the run's verifier: set reward.accuracy in its config")
  runner = RewardRunner([spec], timeout_s=cfg.reward.timeout_s, on_error="exclude")
  tok, data, rc = setup.tokenizer, setup.splits[split], cfg.rollout
  eos = tok.eos_token_id
  total = len(data) if not limit else min(limit, len(data))
  picks = ["best_of_n" + (f"/{k}" if k else "") for k in scorers]
  hits = {k: [] for k in ("greedy", "sample", "majority_vote", "pass_at_n", *picks)}

  def verdict(prompts, texts, rows):
    out = runner(prompts, texts, data.row_columns(rows)).per_function[name]
    return (np.nan_to_num(np.asarray(out, np.float64)) >= 1.0).astype(np.float64)

  for start in range(0, total, batch_prompts):
    idx = list(range(start, min(start + batch_prompts, total)))
    real = len(idx)
    idx += [idx[-1]] * (batch_prompts - real)
    tokens, lengths = pad_prompts([data.prompts[i] for i in idx], cfg.data.length_buckets,
                                  tok.pad_token_id)
    prompts = tok.batch_decode(tokens.tolist(), skip_special_tokens=True)
    attention = np.arange(tokens.shape[1])[None, :] >= tokens.shape[1] - lengths[:, None]
    greedy = decode_texts(tok, device_get(setup.decode(params, tokens, attention)), eos)
    hits["greedy"] += verdict(prompts[:real], greedy[:real], idx[:real]).tolist()
    ro = device_get(setup.sampler.generate(
        params, tokens, lengths, sampling=setup.sampling, max_new_tokens=rc.max_new_tokens,
        stop_token_ids=[eos], rng=jax.random.fold_in(jax.random.key(seed), start),
        num_samples=n))
    texts = decode_texts(tok, np.asarray(ro.tokens)[:, tokens.shape[1]:], eos)[:real * n]
    rep_prompts = [prompts[j // n] for j in range(real * n)]
    rows = [idx[j // n] for j in range(real * n)]
    ok = verdict(rep_prompts, texts, rows).reshape(real, n)
    for key, fn in zip(picks, scorers.values()):
      scores = np.asarray(fn(rep_prompts, texts), np.float64).reshape(real, n)
      hits[key] += [float(ok[q, int(np.argmax(scores[q]))]) for q in range(real)]
    for q in range(real):
      keys = [answer_key(t, name) for t in texts[q * n:(q + 1) * n]]
      hits["sample"].append(float(ok[q].mean()))
      hits["majority_vote"].append(float(ok[q, majority_pick(keys)]))
      hits["pass_at_n"].append(float(ok[q].max()))
  out = {k: float(np.mean(v)) if v else 0.0 for k, v in hits.items()}
  return dict(out, n=n, examples=total, split=split)


__all__ = ["answer_key", "best_of_n", "majority_pick"]
