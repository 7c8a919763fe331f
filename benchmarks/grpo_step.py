"""Seconds per GRPO step on the standard benchmark model, split into generate / log-probs / update.

The standard model: a random `transformers` Qwen2 with hidden 256, intermediate 688, 4 layers,
4 heads, 2 KV heads, vocabulary 32000, tied embeddings, float32 (imported with ``load_hf``).
8 prompts x 8 samples, prompts of 64 tokens, exactly 64 new tokens (no stop token, so every step
does the same work), GRPO with β = 0.04 (k3 in the loss: the reference forward is included), one
epoch, one minibatch. The reward is a cheap host function (it is not what is measured).

Timings are medians over ``--steps`` steps after one warm-up step (which carries compilation).

  python benchmarks/grpo_step.py [--steps 5] [--prompts 8] [--samples 8] [--prompt 64] [--new 64]
                                 [--old-logp-pass auto|always]

``auto`` (the loops' default) skips the old-policy forward, as the loop does for this
configuration; ``always`` times the earlier pipeline with it.
"""

import argparse
import json
import os
import platform
import statistics
import time


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--beta", type=float, default=0.04)
  ap.add_argument("--old-logp-pass", default="auto", choices=["auto", "always"])
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxrl_llm.algorithms import policy_gradient as pg
  from jaxrl_llm.algorithms.common import TrainState, make_optimizer
  from jaxrl_llm.config import AlgorithmConfig, OptimizerConfig
  from jaxrl_llm.models import Decoder
  from jaxrl_llm.rollout import Sampler, SamplingConfig

  from standard_model import load

  params, config = load()
  print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
                    "device": jax.devices()[0].device_kind, "backend": jax.default_backend()}))

  algo = AlgorithmConfig(**dict(pg.PRESETS["grpo"], kl_coef=args.beta,
                                old_logp_pass=args.old_logp_pass))
  pgc = pg.config_from(algo, temperature=1.0, max_new_tokens=args.new)
  model = Decoder(config)
  tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0), 1000)
  update = jax.jit(pg.make_update(model.apply, config, tx, schedule, pgc), donate_argnums=(0,))
  prepare = jax.jit(lambda x: pg.prepare(x, pgc, num_groups=args.prompts))
  logprobs = jax.jit(lambda p, t, a, m: pg.response_logprobs(model.apply, p, config, t, a, m).logp)
  sampler = Sampler(config)
  sampling = SamplingConfig(temperature=1.0)
  # Committed to the device, as the loops' jitted state constructors leave them: a state built
  # eagerly holds uncommitted arrays, the first donated update returns committed ones, and every
  # jitted function would then be traced and compiled a second time at the first timed step.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  reference = jax.device_put(jax.tree.map(jnp.copy, params), device)
  state = jax.device_put(TrainState.create(params, tx, jax.random.PRNGKey(0)), device)
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, 32000, (args.prompts, args.prompt)).astype(np.int32)
  lengths = np.full((args.prompts,), args.prompt, np.int32)
  n = args.prompts * args.samples

  def step(i):
    nonlocal state
    t0 = time.perf_counter()
    ro = sampler.generate(state.params, prompts, lengths, sampling=sampling,
                          max_new_tokens=args.new, stop_token_ids=[],
                          rng=jax.random.PRNGKey(i), num_samples=args.samples)
    jax.block_until_ready(ro.tokens)
    t1 = time.perf_counter()
    tokens = ro.tokens
    attention = ro.prompt_mask | ro.response_mask
    mask = ro.response_mask[:, args.prompt:]
    # As the loop does: no old-policy pass when the update's own forward is the same
    # (pg.reuses_update_logp; --old-logp-pass always runs it).
    old = None if pgc.old_from_update else logprobs(state.params, tokens, attention, mask)
    ref = logprobs(reference, tokens, attention, mask)
    scores = jnp.asarray(rng.integers(0, 2, n), jnp.float32)  # Stand-in for a verifier.
    inputs = {"scores": scores, "group_ids": ro.group_ids, "mask": mask, "ref_logp": ref,
              "kl_coef": jnp.asarray(args.beta, jnp.float32),
              "baseline_scores": jnp.zeros((n,), jnp.float32)}
    if old is not None:
      inputs["old_logp"] = old
    adv, _ = prepare(inputs)
    jax.block_until_ready(adv)
    t2 = time.perf_counter()
    batch = {"tokens": tokens, "attention_mask": attention, "mask": mask, "advantages": adv,
             "ref_logp": ref, "sampler_logp": ro.sampler_logprobs}
    if old is not None:
      batch["old_logp"] = old
    state, metrics = update(state, batch)
    jax.block_until_ready(metrics["train/loss"])
    t3 = time.perf_counter()
    return {"generate_s": t1 - t0, "logprobs_s": t2 - t1, "update_s": t3 - t2, "step_s": t3 - t0}

  warm = step(0)
  runs = [step(i + 1) for i in range(args.steps)]
  med = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
  print(json.dumps({"prompts": args.prompts, "samples": args.samples, "prompt_len": args.prompt,
                    "new_tokens": args.new, "beta": args.beta, "epochs": 1,
                    "old_logp_pass": args.old_logp_pass,
                    "first_step_s_incl_compile": round(warm["step_s"], 2), **med,
                    "generated_tokens_per_s": round(n * args.new / med["step_s"], 1),
                    # Traces of each jitted function over all steps: 1 = no recompilation.
                    "update_traces": update._cache_size(),
                    "logprobs_traces": logprobs._cache_size(),
                    "sampler_traces": sampler.compilations}))


if __name__ == "__main__":
  main()
