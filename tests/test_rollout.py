"""The rollout engine: greedy equals argmax of the full forward, log-probs equal the trainer's
fused recomputation, stops and truncation, reproducibility, batch independence, sharding, bad input
and a chi-square check of the sampling distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrl_llm.config import MeshConfig
from jaxrl_llm.kernels import fused_linear_logprobs
from jaxrl_llm.models import Decoder, init_params, lm_head_weight, tiny
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.rollout import (Sampler, SamplingConfig, pad_prompts, sample_tokens,
                               truncate_logits)
from jaxrl_llm.rollout.sampler import _vocab_blocks, inverse_cdf

CONFIG = tiny("gemma2")  # Soft-capping, sliding window, tied embeddings: the hardest case.
STOP = 7


@pytest.fixture(scope="module")
def params():
  return init_params(CONFIG, jax.random.PRNGKey(0),
                     make_mesh(MeshConfig(data=1), jax.devices()[:1]))[0]


@pytest.fixture(scope="module")
def sampler():
  return Sampler(CONFIG)


PROMPTS, LENGTHS = pad_prompts([[1, 2, 3], [4, 5, 6, 9, 8], [11, 12], [3, 3, 3, 3, 3, 3]],
                               (4, 8), 0)


def gen(sampler, params, sampling, *, t=6, rng=1, prompts=PROMPTS, lengths=LENGTHS, g=1,
        stop=(STOP,)):
  return sampler.generate(params, prompts, lengths, sampling=sampling, max_new_tokens=t,
                          stop_token_ids=stop, rng=jax.random.PRNGKey(rng), num_samples=g)


def test_greedy_equals_argmax_of_full_forward(sampler, params):
  r = gen(sampler, params, SamplingConfig(greedy=True), stop=())
  p = PROMPTS.shape[1]
  apply = jax.jit(lambda t, m: Decoder(CONFIG).apply({"params": params}, t, m))
  mask = np.asarray(r.prompt_mask | r.response_mask)
  tokens = np.asarray(r.tokens)
  for t in range(p, tokens.shape[1]):
    logits = apply(jnp.asarray(tokens[:, :t]), jnp.asarray(mask[:, :t]))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits[:, -1]), -1), tokens[:, t])
  top1 = gen(sampler, params, SamplingConfig(top_k=1, temperature=0.7), stop=())
  np.testing.assert_array_equal(top1.tokens, r.tokens)


@pytest.mark.parametrize("vocab", [300, 256])  # Not a multiple of the 128-wide block, and one.
def test_blocked_argmax_and_inverse_cdf_are_exact(vocab):
  rng = np.random.default_rng(0)
  n = 64
  z = rng.normal(size=(n, vocab)).astype(np.float32) * 3
  z[0, [5, 200 % vocab, vocab - 1]] = 50.0  # Ties: the first index wins, as in np.argmax.
  z[1, vocab - 1] = 60.0  # The maximum in the padded last block.
  z[2, :] = 1.0  # All equal.
  keys = jax.random.split(jax.random.PRNGKey(3), n)
  tok, lp, _ = jax.jit(lambda z: sample_tokens(z, keys, 0, SamplingConfig(greedy=True)))(z)
  np.testing.assert_array_equal(tok, np.argmax(z, -1))
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  np.testing.assert_allclose(lp, z[np.arange(n), np.argmax(z, -1)] - lse, atol=1e-5)
  # The two-level inverse CDF equals a full-length search of the cumulative sum.
  p = np.exp(z - z.max(-1, keepdims=True)).astype(np.float64)
  p[3, 40:] = 0.0  # Trailing zero mass (truncated tokens) must never be drawn ...
  p[4, :] = 0.0
  p[4, 17] = 1.0  # ... nor anything but the one token with mass.
  u = rng.uniform(size=n).astype(np.float32)
  u[3] = np.nextafter(np.float32(1), np.float32(0))
  got = np.asarray(jax.jit(inverse_cdf)(_vocab_blocks(jnp.asarray(p.T, jnp.float32), 0.0),
                                        jnp.asarray(u)))
  c = np.cumsum(p, -1)
  want = np.array([np.searchsorted(c[i], u[i] * c[i, -1], side="right") for i in range(n)])
  assert np.mean(got == want) > 0.95  # float32 block sums vs a float64 prefix: boundary ties.
  assert np.all(np.abs(got - want) <= 1) and np.all(p[np.arange(n), got] > 0)
  assert got[3] < 40 and got[4] == 17


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampler_logprobs_equal_fused_recomputation(sampler, params, temperature):
  r = gen(sampler, params, SamplingConfig(temperature=temperature), t=8, g=2)
  tokens, mask = r.tokens, r.prompt_mask | r.response_mask
  hidden = Decoder(CONFIG).apply({"params": params}, tokens, mask, return_hidden=True)
  out = fused_linear_logprobs(hidden[:, :-1], lm_head_weight(params, CONFIG), tokens[:, 1:],
                              temperature=temperature, softcap=CONFIG.final_softcap)
  p = PROMPTS.shape[1]
  recomputed = np.asarray(out.logp[:, p - 1:])
  resp = np.asarray(r.response_mask[:, p:])
  np.testing.assert_allclose(recomputed[resp], np.asarray(r.sampler_logprobs)[resp], atol=1e-5)
  assert np.all(np.asarray(r.sampler_logprobs)[~resp] == 0.0)


def test_truncated_logprobs_are_renormalised(sampler, params):
  r = gen(sampler, params, SamplingConfig(top_k=3), t=5)
  resp = np.asarray(r.response_mask[:, PROMPTS.shape[1]:])
  full = np.asarray(r.sampler_logprobs)[resp]
  trunc = np.asarray(r.sampler_logprobs_truncated)[resp]
  assert np.all(trunc >= full - 1e-6) and np.all(trunc <= 0.0)


def test_stops_truncation_and_masks(sampler, params):
  # Force stops: every token id is a stop token except those the greedy path would avoid.
  r = gen(sampler, params, SamplingConfig(greedy=True), t=6, stop=())
  first = int(np.asarray(r.tokens)[0, PROMPTS.shape[1] + 1])  # Row 0's second generated token.
  r = gen(sampler, params, SamplingConfig(greedy=True), t=6, stop=(first,))
  p = PROMPTS.shape[1]
  row = np.asarray(r.tokens[0, p:])
  assert bool(r.finished[0]) and int(r.lengths[0]) == list(row).index(first) + 1
  n = int(r.lengths[0])
  assert np.all(row[n:] == 0)
  assert np.asarray(r.response_mask[0, p:]).tolist() == [True] * n + [False] * (6 - n)
  unfinished = ~np.asarray(r.finished)
  assert np.all(np.asarray(r.lengths)[unfinished] == 6)  # Truncated rows run to the limit.
  assert np.asarray(r.prompt_mask).sum() == LENGTHS.sum()


def test_reproducible_and_independent_of_batch_composition(sampler, params):
  sampling = SamplingConfig(temperature=1.0, top_p=0.95)
  a = gen(sampler, params, sampling, rng=5)
  b = gen(sampler, params, sampling, rng=5)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  c = gen(sampler, params, sampling, rng=6)
  assert not np.array_equal(a.tokens, c.tokens)
  # Rows 0-1 alone, then with two more rows appended: rows 0-1 are unchanged.
  small = gen(sampler, params, sampling, rng=5, prompts=PROMPTS[:2], lengths=LENGTHS[:2])
  p = PROMPTS.shape[1]
  np.testing.assert_array_equal(small.tokens[:, p:], a.tokens[:2, p:])


def test_group_fan_out(sampler, params):
  r = gen(sampler, params, SamplingConfig(temperature=1.0), g=3)
  assert r.tokens.shape[0] == 12 and r.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
  p = PROMPTS.shape[1]
  np.testing.assert_array_equal(np.asarray(r.tokens[:3, :p]), np.repeat(PROMPTS[:1], 3, 0))
  assert len({tuple(x) for x in np.asarray(r.tokens[:3, p:])}) > 1  # Samples differ.


def test_sharded_equals_one_device(params):
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  from jaxrl_llm.models import init_params as init

  sharded_params, _ = init(CONFIG, jax.random.PRNGKey(0), mesh)
  prompts = np.concatenate([PROMPTS, PROMPTS[::-1]])
  lengths = np.concatenate([LENGTHS, LENGTHS[::-1]])
  sampling = SamplingConfig(temperature=0.8, top_k=20)
  one = Sampler(CONFIG).generate(params, prompts, lengths, sampling=sampling, max_new_tokens=5,
                                 stop_token_ids=[STOP], rng=jax.random.PRNGKey(3))
  many = Sampler(CONFIG, mesh=mesh).generate(sharded_params, prompts, lengths, sampling=sampling,
                                             max_new_tokens=5, stop_token_ids=[STOP],
                                             rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(one.tokens, many.tokens)
  np.testing.assert_allclose(one.sampler_logprobs, many.sampler_logprobs, atol=1e-5)


def test_one_compilation_per_bucket(params):
  s = Sampler(CONFIG)
  sampling = SamplingConfig(temperature=1.0)
  for rng in range(3):
    s.generate(params, PROMPTS, LENGTHS, sampling=sampling, max_new_tokens=4,
               stop_token_ids=[STOP], rng=jax.random.PRNGKey(rng))
  assert s.compilations == 1
  short, short_len = pad_prompts([[1, 2]], (4, 8), 0)
  s.generate(params, short, short_len, sampling=sampling, max_new_tokens=4,
             stop_token_ids=[STOP], rng=jax.random.PRNGKey(0))
  assert s.compilations == 2


def test_bad_input_fails_before_compiling(sampler, params):
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    pad_prompts([[1], []], (4,), 0)
  with pytest.raises(ValueError, match="more than the largest bucket"):
    pad_prompts([[1] * 9], (4, 8), 0)
  before = sampler.compilations
  with pytest.raises(ValueError, match="outside the vocabulary"):
    gen(sampler, params, SamplingConfig(), stop=(CONFIG.vocab_size + 3,))
  with pytest.raises(ValueError, match="empty prompt"):
    gen(sampler, params, SamplingConfig(), lengths=np.array([3, 0, 2, 6]))
  with pytest.raises(ValueError, match="max_new_tokens"):
    gen(sampler, params, SamplingConfig(), t=0)
  gpt2 = tiny("gpt2", max_seq_len=10)
  with pytest.raises(ValueError, match="learned positions"):
    Sampler(gpt2).generate(None, PROMPTS, LENGTHS, sampling=SamplingConfig(), max_new_tokens=5,
                           stop_token_ids=[], rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(top_p=0.0)
  assert sampler.compilations == before


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.7),
                                      SamplingConfig(temperature=1.0, top_k=5),
                                      SamplingConfig(temperature=1.3, top_p=0.8)],
                         ids=["t0.7", "topk5", "topp0.8"])
def test_token_frequencies_match_the_distribution(params, sampling):
  prompt, length = pad_prompts([[5, 9, 2]], (4,), 0)
  n = 3000
  r = Sampler(CONFIG).generate(params, prompt, length, sampling=sampling, max_new_tokens=1,
                               stop_token_ids=[], rng=jax.random.PRNGKey(42), num_samples=n)
  first = np.asarray(r.tokens[:, prompt.shape[1]])
  logits = Decoder(CONFIG).apply({"params": params}, jnp.asarray(prompt),
                                 jnp.asarray(prompt > 0))[:, -1]
  z = truncate_logits(logits / sampling.temperature, sampling) if sampling.truncates else (
      logits / sampling.temperature)
  probs = np.asarray(jax.nn.softmax(z, -1))[0]
  support = probs > 1e-9
  assert np.all(support[first])  # Never a truncated-away token.
  counts = np.bincount(first, minlength=probs.size)
  expected = probs * n
  big = expected >= 5  # Pool rare tokens into one cell (chi-square validity).
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  keep = exp > 0
  chi2 = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
  assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1), chi2


REFILL_STOPS = tuple(range(0, CONFIG.vocab_size, 4))  # A quarter of the vocabulary: rows end early.


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=1.0),
                                      SamplingConfig(temperature=0.8, top_k=20, top_p=0.9),
                                      SamplingConfig(greedy=True)], ids=["t1", "truncated", "greedy"])
def test_refill_returns_the_static_rows_bit_for_bit(params, sampling):
  # 4 prompts x 3 samples = 12 rows through 2, 3 and 5 slots: rows stop at different steps, so
  # slots are refilled mid-decode and rows run in other slots and at other times than in the
  # static batch; tokens, masks and lengths must match exactly. Log-probs match to float rounding
  # only: XLA:CPU picks its matmul kernel by batch size (2 rows and 12 rows round differently).
  static = Sampler(CONFIG)
  kw = dict(t=10, g=3, stop=REFILL_STOPS, rng=4)
  want = jax.device_get(gen(static, params, sampling, **kw))
  lengths = np.asarray(want.lengths)
  assert want.finished.any() and len(set(lengths.tolist())) >= 2  # Refill has work to do.
  for slots in (2, 3, 5):
    s = Sampler(CONFIG, refill=True, slots=slots)
    got = jax.device_get(gen(s, params, sampling, **kw))
    for field in ("tokens", "prompt_mask", "response_mask", "lengths", "finished", "group_ids"):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field),
                                    err_msg=f"{field} with {slots} slots")
    for field in ("sampler_logprobs", "sampler_logprobs_truncated"):
      np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=0, atol=2e-6,
                                 err_msg=f"{field} with {slots} slots")
    gen(s, params, sampling, **dict(kw, rng=9))
    assert s.compilations == 1


def test_refill_on_a_mesh_and_with_one_slot(params):
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  from jaxrl_llm.models import init_params as init

  sharded_params, _ = init(CONFIG, jax.random.PRNGKey(0), mesh)
  sampling = SamplingConfig(temperature=1.0)
  kw = dict(t=8, g=2, stop=REFILL_STOPS, rng=2)
  want = gen(Sampler(CONFIG), params, sampling, **kw)
  got = gen(Sampler(CONFIG, mesh=mesh, refill=True), sharded_params, sampling, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.sampler_logprobs, want.sampler_logprobs, atol=1e-5)
  # One slot (matrix-vector kernels, other rounding): the rows are still the same.
  one = gen(Sampler(CONFIG, refill=True, slots=1), params, sampling, **kw)
  np.testing.assert_array_equal(one.tokens, want.tokens)
  np.testing.assert_allclose(one.sampler_logprobs, want.sampler_logprobs, atol=1e-5)
  with pytest.raises(ValueError, match="slots"):
    Sampler(CONFIG, slots=-1)
