"""``jaxrl-llm plan``: will this RL step compile and fit on that TPU slice? Answered on a laptop.

:func:`plan` builds an experiment's step programs exactly as the RL loop does — the policy update
(``jax.jit`` of the algorithm's ``update(state, batch)`` with the state donated), the log-prob
pass (old policy / reference), the sampler's prefill and one decode step — for a model shape
(the experiment's, or a released model's from :data:`jaxrl_llm.models.presets.REAL_SIZES`), on
the mesh the config asks for over a TPU slice's devices, and compiles them with libtpu's compiler
(:mod:`jaxrl_llm.parallel.tpu`; no TPU, no weights). From XLA's own ``memory_analysis()`` and
``cost_analysis()`` of each compiled program it reports per device:

* resident: parameters, optimizer state, the reference copy (KL with β > 0, no LoRA) — sized from
  their shardings;
* per program: arguments, outputs, temporaries (activations and workspace), FLOPs;
* the peak: resident bytes plus the largest program's own (non-resident) arguments, outputs and
  temporaries, against the chip's HBM.

The sampler is modelled as the static path (all rows prefilled, one cache of ``P + T`` slots);
the refill sampler's cache is at most that. The policy-gradient family is covered (GRPO, Dr.GRPO,
DAPO, RLOO, REINFORCE++, ReMax, GSPO, Clip/KL-Cov, the demonstration methods); PPO and PRIME keep
further models and are refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm.config import Config, ConfigError
from jaxrl_llm.parallel import tpu

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program's per-device figures (bytes; FLOPs per call)."""

  name: str
  calls: int  # Per RL step.
  argument_bytes: int
  resident_argument_bytes: int  # The part of the arguments that lives across programs.
  output_bytes: int
  alias_bytes: int  # Outputs written into donated arguments.
  temp_bytes: int
  flops: float
  error: str = ""  # The compiler's own out-of-memory verdict, when it refused.

  @property
  def own_bytes(self) -> int:
    """What this program needs beyond the resident state while it runs."""
    return (self.argument_bytes - self.resident_argument_bytes + self.output_bytes
            - self.alias_bytes + self.temp_bytes)


@dataclasses.dataclass(frozen=True)
class Plan:
  slice: str
  chip: tpu.Chip
  mesh: dict
  model: str
  rows: int
  prompt_len: int
  response_len: int
  params_bytes: int
  optimizer_bytes: int
  reference_bytes: int
  kv_cache_bytes: int
  programs: tuple[Program, ...]
  remat: bool = False

  @property
  def resident_bytes(self) -> int:
    return self.params_bytes + self.optimizer_bytes + self.reference_bytes

  @property
  def peak_program(self) -> Program:
    return max(self.programs, key=lambda p: p.own_bytes)

  @property
  def peak_bytes(self) -> int:
    return self.resident_bytes + self.peak_program.own_bytes

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.chip.hbm_bytes and not any(p.error for p in self.programs)

  @property
  def flops_per_step(self) -> float:
    return sum(p.flops * p.calls for p in self.programs)

  def largest(self) -> tuple[str, int, str]:
    """(what, bytes, the setting that shrinks it) of the largest part of the peak."""
    peak = self.peak_program
    parts = [("parameters", self.params_bytes,
              "shard them over more chips (mesh.fsdp) or store them in bfloat16 "
              "(model.param_dtype=bfloat16)"),
             ("optimizer state", self.optimizer_bytes,
              "mesh.fsdp, or train adapters only (model.lora.rank=16)"),
             ("reference policy copy", self.reference_bytes,
              "model.lora.rank (the reference is then the frozen base) or algorithm.kl_coef=0"),
             (f"{peak.name} temporaries (activations)", peak.temp_bytes,
              ("" if self.remat else "model.remat=true, ") +
              "more algorithm.micro_batches, or fewer rollout rows"),
             (f"{peak.name} inputs and outputs", peak.own_bytes - peak.temp_bytes,
              "fewer rollout rows or a shorter rollout.max_new_tokens")]
    return max(parts, key=lambda x: x[1])

  def table(self) -> str:
    """The human-readable report ``jaxrl-llm plan`` prints."""
    mesh = " × ".join(f"{k} {v}" for k, v in self.mesh.items())
    lines = [f"plan: {self.model} on {self.slice} ({self.chip.device_kind}, "
             f"{self.chip.hbm_bytes / GIB:.1f} GiB HBM per device), mesh {mesh}",
             f"  step: {self.rows} rows × ({self.prompt_len} prompt + {self.response_len} "
             f"response) tokens",
             "  per device            GiB",
             f"  parameters        {self.params_bytes / GIB:9.3f}",
             f"  optimizer state   {self.optimizer_bytes / GIB:9.3f}",
             f"  reference copy    {self.reference_bytes / GIB:9.3f}",
             f"  KV cache          {self.kv_cache_bytes / GIB:9.3f}",
             "  program           arguments  outputs  temporaries  own  TFLOP/call  calls"]
    for p in self.programs:
      lines.append(f"  {p.name:<16} {p.argument_bytes / GIB:9.2f} {p.output_bytes / GIB:8.2f} "
                   f"{p.temp_bytes / GIB:12.2f} {p.own_bytes / GIB:5.2f} {p.flops / 1e12:11.3f}"
                   f"  {p.calls:5d}")
    step_s = self.flops_per_step / self.chip.bf16_flops
    lines += [f"  peak: {self.peak_bytes / GIB:.2f} GiB of {self.chip.hbm_bytes / GIB:.1f} GiB "
              f"(resident {self.resident_bytes / GIB:.2f} + {self.peak_program.name} "
              f"{self.peak_program.own_bytes / GIB:.2f})",
              f"  FLOPs per step per device: {self.flops_per_step / 1e12:.1f} T "
              f"(≥ {step_s:.2f} s at the chip's peak bf16 rate)"]
    for p in self.programs:
      if p.error:
        lines.append(f"  {p.name}: the TPU compiler refused it: {p.error}")
    if self.fits:
      lines.append("  fits")
    else:
      what, size, fix = self.largest()
      lines.append(f"  DOES NOT FIT: the largest buffer is {what} ({size / GIB:.2f} GiB per "
                   f"device); try {fix}")
    return "\n".join(lines)


def _shard_bytes(tree) -> int:
  """Per-device bytes of a ``ShapeDtypeStruct`` tree with shardings (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


_HBM_OOM = re.compile(r"temporaries \(([\d.]+)([KMGT])\)")


def _program(name, compiled, resident: int, calls: int) -> Program:
  if isinstance(compiled, str):  # XLA refused: it needs more HBM than the chip has.
    hit = _HBM_OOM.search(compiled)
    temp = int(float(hit[1]) * 1024 ** "KMGT".index(hit[2]) * 1024) if hit else 0
    return Program(name=name, calls=calls, argument_bytes=resident,
                   resident_argument_bytes=resident, output_bytes=0, alias_bytes=0,
                   temp_bytes=temp, flops=0.0, error=compiled.splitlines()[0])
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Program(name=name, calls=calls, argument_bytes=int(mem.argument_size_in_bytes),
                 resident_argument_bytes=resident, output_bytes=int(mem.output_size_in_bytes),
                 alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                 flops=float((cost or {}).get("flops", 0.0)))


def model_for(config: Config, model: str | None, length: int):
  """The model config to plan: a released architecture (``model``) with the experiment's
  dtypes, adapters, remat and kernel choice, or the experiment's own model."""
  from jaxrl_llm.models.presets import real_size

  mc = config.model
  if model is None:
    if not mc.vocab_size:
      from jaxrl_llm.data import build_char_tokenizer
      mc = mc.with_vocab(len(build_char_tokenizer()))
    return dataclasses.replace(mc, max_seq_len=max(mc.max_seq_len, length))
  base = real_size(model)
  return dataclasses.replace(base, param_dtype=mc.param_dtype, dtype=mc.dtype, lora=mc.lora,
                             remat=mc.remat, logprob_impl=mc.logprob_impl,
                             max_seq_len=max(base.max_seq_len, length))


def plan(config: Config, slice_name: str, *, model: str | None = None,
         prompt_len: int | None = None) -> Plan:
  """Compiles the RL step's programs of ``config`` for TPU slice ``slice_name`` and measures them.

  Args:
    config: an RL experiment's config (the policy-gradient family).
    slice_name: ``v5e-8``, ``v5p-16``, ``v6e-8`` ... (:func:`tpu.slice_names`).
    model: a name in :data:`~jaxrl_llm.models.presets.REAL_SIZES`; None: the experiment's model.
    prompt_len: prompt tokens per row; default the largest of ``data.length_buckets``.
  Raises:
    ConfigError: an algorithm it does not cover, a mesh that does not divide the slice, a row
      count the mesh cannot split, no prompt length; ValueError: an unknown slice or model.
  """
  from jaxrl_llm.algorithms import policy_gradient as pg
  from jaxrl_llm.algorithms.common import TrainState, make_optimizer, train_state_shardings
  from jaxrl_llm.models import Decoder, lora
  from jaxrl_llm.models.decoder import init_cache, lm_head
  from jaxrl_llm.models.init import abstract_params, param_logical_axes
  from jaxrl_llm.parallel.mesh import make_mesh, replicated, tree_shardings
  from jaxrl_llm.rundir.checkpoint import abstract_with_shardings
  from jaxrl_llm.train import sft_loop

  ac, rc = config.algorithm, config.rollout
  if ac.name in ("ppo", "prime"):
    raise ConfigError(f"config field 'algorithm.name': plan covers the policy-gradient family; "
                      f"{ac.name!r} keeps further models (critic / implicit PRM) and is not "
                      "planned yet")
  gen, _, _ = tpu.parse_slice(slice_name)
  chip = tpu.chip(gen)
  devices = tpu.topology(slice_name)
  if prompt_len is None:
    if isinstance(config.data.length_buckets, str):
      raise ConfigError("config field 'data.length_buckets' is 'auto': give the prompt length "
                        "(--prompt-len N) or set data.length_buckets")
    prompt_len = int(config.data.length_buckets[-1])
  t = rc.max_new_tokens
  length = prompt_len + t
  mc = model_for(config, model, length)
  mesh = make_mesh(config.mesh, devices)
  n = rc.prompts_per_step * rc.samples_per_prompt
  row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if n % (row_shards * ac.minibatches * ac.micro_batches):
    raise ConfigError(f"config field 'rollout.prompts_per_step': {n} rows do not split over "
                      f"{row_shards} data×fsdp shards × {ac.minibatches} minibatches × "
                      f"{ac.micro_batches} micro-batches")
  name = model or f"{config.model.family} (experiment's model)"

  def compile_(fn, *args):
    # The mesh is set while tracing: the Pallas log-prob kernel runs under shard_map over it.
    with jax.set_mesh(mesh):
      lowered = fn.lower(*args)
    try:
      return lowered.compile()
    except Exception as e:  # noqa: BLE001 -- only the compiler's out-of-HBM verdict is a result.
      if "RESOURCE_EXHAUSTED" in str(e) and "HBM" in str(e):
        return str(e)
      raise

  with tpu.compiling_for(gen):
    decoder = Decoder(mc)
    tx, schedule = make_optimizer(config.optimizer, config.train.steps * ac.epochs *
                                  ac.minibatches)
    tx = sft_loop.param_optimizer(tx, config, mc)
    abstract = abstract_params(mc)
    param_shardings = tree_shardings(abstract, param_logical_axes(mc), mesh)
    params = abstract_with_shardings(abstract, param_shardings)
    state_shardings = train_state_shardings(tx, abstract, param_shardings, mesh)
    state = abstract_with_shardings(
        jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0)), abstract),
        state_shardings)
    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    row1 = NamedSharding(mesh, P(("data", "fsdp")))
    spec = lambda shape, dt, s=rows: jax.ShapeDtypeStruct(shape, dt, sharding=s)
    pg_config = pg.config_from(ac, temperature=rc.temperature, max_new_tokens=t)
    tokens, attention, mask = (spec((n, length), jnp.int32), spec((n, length), jnp.bool_),
                               spec((n, t), jnp.bool_))
    f32 = spec((n, t), jnp.float32)
    inputs = {"scores": spec((n,), jnp.float32, row1), "mask": mask, "ref_logp": f32,
              "kl_coef": jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated(mesh)),
              "group_ids": spec((n,), jnp.int32, row1),
              "baseline_scores": spec((n,), jnp.float32, row1)}
    reuses = pg.reuses_update_logp(ac)
    if not reuses:
      inputs["old_logp"] = f32
    adv, _ = jax.eval_shape(lambda x: pg.prepare(x, pg_config, num_groups=rc.prompts_per_step),
                            inputs)
    batch = {"tokens": tokens, "attention_mask": attention, "mask": mask,
             "advantages": spec(adv.shape, adv.dtype, rows if adv.ndim == 2 else row1),
             "ref_logp": f32, "sampler_logp": f32}
    if not reuses:
      batch["old_logp"] = f32
    update = jax.jit(pg.make_update(decoder.apply, mc, tx, schedule, pg_config),
                     out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
    state_bytes = _shard_bytes(state)
    params_bytes = _shard_bytes(params)
    programs = [_program("update", compile_(update, state, batch), state_bytes, 1)]

    passes = (0 if reuses else 1) + (1 if ac.uses_reference else 0)
    reference_bytes = params_bytes if ac.uses_reference and not mc.lora.rank else 0
    if passes:
      lp_cfg = lora.base_config(mc) if (mc.lora.rank and reuses) else mc
      lp_model = Decoder(lp_cfg)
      logprobs = jax.jit(lambda p, a, b, c: pg.response_logprobs(
          lp_model.apply, p, lp_cfg, a, b, c, temperature=rc.temperature), out_shardings=rows)
      lp_params = params if lp_cfg is mc else abstract_with_shardings(
          lora.base_of(abstract), lora.base_of(param_shardings))
      programs.append(_program("log-prob pass",
                               compile_(logprobs, lp_params, tokens, attention, mask),
                               _shard_bytes(lp_params), passes))

    cache_abs = jax.eval_shape(lambda: init_cache(mc, n, length))
    cache_shardings = jax.tree.map(
        lambda x: rows if x.ndim == 2 else (NamedSharding(mesh, P(("data", "fsdp"), None, None,
                                                                 None)) if x.ndim == 4
                                            else replicated(mesh)), cache_abs)
    cache = abstract_with_shardings(cache_abs, cache_shardings)

    def prefill(p, tok, att, c):
      hidden, new = decoder.apply({"params": p}, tok, att, cache=c, return_hidden=True)
      return lm_head(p, mc, hidden[:, -1]), new

    def decode(p, tok, c):
      logits, new = decoder.apply({"params": p}, tok, jnp.ones_like(tok, bool), cache=c)
      return logits[:, -1], new

    prompt = spec((n, prompt_len), jnp.int32)
    programs.append(_program(
        "prefill", compile_(jax.jit(prefill, donate_argnums=(3,),
                                    out_shardings=(rows, cache_shardings)),
                            params, prompt, spec((n, prompt_len), jnp.bool_), cache),
        params_bytes, 1))
    programs.append(_program(
        "decode step", compile_(jax.jit(decode, donate_argnums=(2,),
                                        out_shardings=(rows, cache_shardings)),
                                params, spec((n, 1), jnp.int32), cache), params_bytes, t - 1))
  return Plan(slice=slice_name, chip=chip, mesh=dict(mesh.shape), model=name, rows=n,
              prompt_len=prompt_len, response_len=t, params_bytes=params_bytes,
              optimizer_bytes=state_bytes - params_bytes, reference_bytes=reference_bytes,
              kv_cache_bytes=_shard_bytes(cache), programs=tuple(programs), remat=mc.remat)
