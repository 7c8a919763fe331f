"""Update sparsity (docs/algorithms.md §20): exact counts on constructed pytrees, bf16 rounding, the
update rank of a constructed rank-r delta, overlap vs chance, and the command on real runs."""

import copy
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.analysis import sparsity


def _trees():
  rng = np.random.default_rng(0)
  before = {"embedding": rng.normal(size=(8, 4)).astype(np.float32),
            "layer_0": {"attn": {"q": rng.normal(size=(4, 2, 2)).astype(np.float32),
                                 "o": rng.normal(size=(2, 2, 4)).astype(np.float32)},
                        "attn_norm": {"scale": np.ones(4, np.float32)}},
            "layer_1": {"mlp": {"up": rng.normal(size=(4, 6)).astype(np.float32)}}}
  after = copy.deepcopy(before)
  after["embedding"][0, :2] += 0.5  # 2 of 32 changed
  after["layer_0"]["attn"]["q"][1, 0, 0] += 1e-6  # below τ: unchanged (not exactly zero)
  after["layer_0"]["attn"]["q"][2, 1, 1] += 0.1  # 1 of 16 changed
  after["layer_1"]["mlp"]["up"][:, :] += 0.01  # all 24 changed
  return before, after


def test_exact_counts_per_tensor_layer_and_global():
  before, after = _trees()
  report = sparsity.compare(sparsity.flatten(before), sparsity.flatten(after))
  t = report["tensors"]
  assert t["['embedding']"]["changed_fraction"] == 2 / 32
  assert t["['layer_0']['attn']['q']"]["changed_fraction"] == 1 / 16
  assert t["['layer_0']['attn']['q']"]["exact_zero_fraction"] == 14 / 16  # the 1e-6 is not 0
  assert t["['layer_0']['attn']['o']"]["changed_fraction"] == 0.0
  assert t["['layer_1']['mlp']['up']"]["changed_fraction"] == 1.0
  n = 32 + 16 + 16 + 4 + 24
  assert report["parameters"] == n
  assert report["changed_fraction"] == pytest.approx((2 + 1 + 24) / n)
  assert report["sparsity"] == pytest.approx(1 - (2 + 1 + 24) / n)
  # Per layer: the mean of the tensors' changed fractions (layer 0: q 1/16, o 0, norm 0).
  assert report["per_layer_changed_fraction"] == {"0": pytest.approx(1 / 48), "1": 1.0}
  assert report["dtype"] == "float32" and report["tolerance"] == 1e-5


def test_a_change_below_bf16_resolution_is_no_change():
  before = {"w": np.full((4, 4), 1.0, np.float32)}
  after = {"w": before["w"].copy()}
  after["w"][0, 0] += 1e-3  # bf16 has 8 bits of mantissa: 1 + 1e-3 rounds to 1
  after["w"][1, 1] += 0.25  # representable: a change
  f32 = sparsity.compare(sparsity.flatten(before), sparsity.flatten(after))
  bf16 = sparsity.compare(sparsity.flatten(before), sparsity.flatten(after), dtype="bfloat16")
  assert f32["tensors"]["['w']"]["changed_fraction"] == 2 / 16
  assert bf16["tensors"]["['w']"]["changed_fraction"] == 1 / 16
  assert bf16["dtype"] == "bfloat16" and bf16["exact_zero_fraction"] == 15 / 16
  # Stored bf16 arrays are compared as they are (the report names their dtype).
  stored = sparsity.compare(sparsity.flatten({"w": jnp.asarray(before["w"], jnp.bfloat16)}),
                            sparsity.flatten({"w": jnp.asarray(after["w"], jnp.bfloat16)}))
  assert stored["dtype"] == "bfloat16" and stored["changed_fraction"] == 1 / 16


def test_update_rank_of_a_constructed_rank_r_delta():
  rng = np.random.default_rng(1)
  for r in (1, 3, 8):
    delta = rng.normal(size=(16, r)) @ rng.normal(size=(r, 8))
    assert sparsity.update_rank(delta) == r / 8
  assert sparsity.update_rank(np.zeros((4, 4))) == 0.0
  # An attention output projection [heads, head_dim, d] is the matrix [heads·head_dim, d].
  o = rng.normal(size=(2, 3, 5))
  assert sparsity.matrix_view("['layer_0']['attn']['o']", o).shape == (6, 5)
  assert sparsity.matrix_view("['layer_0']['attn']['q']", np.zeros((5, 2, 3))).shape == (5, 6)
  assert sparsity.matrix_view("['final_norm']['scale']", np.zeros(5)) is None
  before, after = _trees()
  report = sparsity.compare(sparsity.flatten(before), sparsity.flatten(after))
  assert report["tensors"]["['layer_1']['mlp']['up']"]["update_rank"] == 1 / 4  # a constant shift
  assert report["tensors"]["['layer_0']['attn_norm']['scale']"]["update_rank"] is None


def test_overlap_and_its_chance_level():
  base = {"w": np.zeros(100, np.float32)}
  a = {"w": base["w"].copy()}
  b = {"w": base["w"].copy()}
  a["w"][:20] = 1.0  # A: 20 entries
  b["w"][10:50] = 1.0  # B: 40 entries, 10 shared with A
  report = sparsity.compare(sparsity.flatten(base), sparsity.flatten(a),
                            against=sparsity.flatten(b))
  assert report["overlap"] == 10 / 20 and report["overlap_chance"] == 40 / 100
  with pytest.raises(ValueError, match="order differs"):
    sparsity.compare(sparsity.flatten(base), sparsity.flatten({"v": a["w"]}))


def test_analyze_sparsity_of_a_run_against_its_warm_start(tiny, tmp_path, capsys):
  from conftest import replace

  from jaxrl_llm import cli
  from jaxrl_llm.config import InitConfig
  from jaxrl_llm.train import sft_loop

  start = str(tmp_path / "start")
  sft_loop.train(replace(tiny, train=dict(steps=2, eval_every=0, test_examples=0)), start)
  after = str(tmp_path / "after")
  sft_loop.train(replace(tiny, init=InitConfig(policy_run=start),
                         train=dict(steps=2, eval_every=0, test_examples=0)), after)
  assert cli.main(["analyze", "sparsity", after, "--dtype", "bfloat16"]) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["dtype"] == "bfloat16" and 0.0 <= line["sparsity"] < 1.0
  assert os.path.exists(os.path.join(after, "analysis", "sparsity.png"))
  report = json.load(open(os.path.join(after, "analysis", "sparsity.json")))
  assert report["before"] == start and "0" in report["per_layer_changed_fraction"]
  # step:N of the same run, and a clear error for a directory that is neither kind.
  assert cli.main(["analyze", "sparsity", after, "--before", "step:2", "--out",
                   str(tmp_path / "same")]) == 0
  same = json.load(open(tmp_path / "same" / "sparsity.json"))
  assert same["sparsity"] == 1.0 and same["exact_zero_fraction"] == 1.0
  capsys.readouterr()
  assert cli.main(["analyze", "sparsity", after, "--before", str(tmp_path)]) == 2
  assert "neither a run directory nor a Hugging Face checkpoint" in capsys.readouterr().err


def test_the_entropy_law_fit_recovers_a_and_b(tmp_path, capsys):
  from jaxrl_llm import cli
  from jaxrl_llm.analysis import entropy

  h = np.linspace(0.1, 1.2, 40)
  r = -0.3 * np.exp(h) + 0.9
  got = entropy.fit(h, r)
  assert got["a"] == pytest.approx(0.3) and got["b"] == pytest.approx(0.9)
  assert got["r2"] == pytest.approx(1.0) and got["ceiling"] == pytest.approx(0.6)
  noisy = entropy.fit(h, r + np.random.default_rng(0).normal(0, 0.01, 40))
  assert abs(noisy["a"] - 0.3) < 0.03 and 0.9 < noisy["r2"] < 1.0
  with pytest.raises(ValueError, match="at least 3"):
    entropy.fit([0.1, np.nan], [0.2, 0.3])
  with pytest.raises(ValueError, match="same at every step"):
    entropy.fit([0.5] * 4, [0.1, 0.2, 0.3, 0.4])
  # The command on a run directory's metrics.jsonl (reward/accuracy preferred).
  run = tmp_path / "run"
  run.mkdir()
  with open(run / "metrics.jsonl", "w") as f:
    for hi, ri in zip(h, r):
      f.write(json.dumps({"train/entropy": hi, "reward/accuracy": ri, "reward/mean": 0.0}) + "\n")
  assert cli.main(["analyze", "entropy", str(run)]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["reward"] == "reward/accuracy" and out["a"] == pytest.approx(0.3)
  assert os.path.exists(run / "analysis" / "entropy.png")
  (tmp_path / "sft").mkdir()
  (tmp_path / "sft" / "metrics.jsonl").write_text(json.dumps({"train/loss": 1.0}) + "\n")
  assert cli.main(["analyze", "entropy", str(tmp_path / "sft")]) == 2
  assert "no train/entropy" in capsys.readouterr().err
  assert cli.main(["analyze", "entropy", str(tmp_path / "none")]) == 2


def test_masked_updates_leave_masked_parameters_bit_identical():
  import jax
  import optax

  from jaxrl_llm.algorithms.common import make_optimizer
  from jaxrl_llm.config import OptimizerConfig

  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  mask = {"w": rng.random((6, 5)) < 0.5, "b": np.array([True, False, True, False, True])}
  tx, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0,
                                         weight_decay=0.1), 10)
  tx = optax.chain(tx, sparsity.masked_updates(mask))
  state = tx.init(params)
  p = params
  for step in range(4):
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3 * (step + 1)), p)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  for k in params:
    before, after = np.asarray(params[k]), np.asarray(p[k])
    np.testing.assert_array_equal(after[~mask[k]], before[~mask[k]])  # bit-identical
    assert np.all(after[mask[k]] != before[mask[k]])


def test_subnetwork_only_sft_keeps_the_rest_of_the_policy_fixed(tiny, tmp_path):
  import jax
  from conftest import replace

  from jaxrl_llm.config import ConfigError, InitConfig
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import sft_loop

  quick = dict(steps=2, eval_every=0, test_examples=0)
  tiny = replace(tiny, model=dict(tie_embeddings=False))
  start = str(tmp_path / "start")
  sft_loop.train(replace(tiny, train=quick), start)
  # Untied, without weight decay, the input-embedding rows of characters the task never uses get
  # no update: they are outside run A's changed set.
  first = str(tmp_path / "a")
  sft_loop.train(replace(tiny, init=InitConfig(policy_run=start), train=quick,
                         optimizer=dict(weight_decay=0.0)), first)
  mask = sparsity.update_mask(first)
  assert 0 < sum(int(m.sum()) for m in jax.tree.leaves(mask)) < sum(
      m.size for m in jax.tree.leaves(mask))
  # Run B, with weight decay (which would move every matrix), may update only A's set.
  second = str(tmp_path / "b")
  sft_loop.train(replace(tiny, init=InitConfig(policy_run=start),
                         train=dict(quick, update_mask=first),
                         optimizer=dict(weight_decay=0.1)), second)
  p0 = load_run(start).policy_params()
  p2 = load_run(second).policy_params()
  for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(p0), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(b)[~m], np.asarray(a)[~m])
  assert any(np.any(np.asarray(b)[m] != np.asarray(a)[m])
             for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(p0), jax.tree.leaves(p2)))
  with pytest.raises(ConfigError, match="train.update_mask"):
    sft_loop.train(replace(tiny, train=dict(quick, update_mask=str(tmp_path / "none"))),
                   str(tmp_path / "c"))
