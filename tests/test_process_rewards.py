"""Process rewards: step-labelled data located by character offsets, the PRM loss, solution scores
and GRPO process-supervision advantages (docs/algorithms.md §18)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxrl_llm.data import BadRowError, build_char_tokenizer
from jaxrl_llm.data.steps import chain_step_labels, encode_steps, parse_step_row
from jaxrl_llm.ops import process


def _merging_tokenizer():
  """Characters, except that ``".\\n"`` is one token (a merge across the step delimiter)."""
  chars = [chr(c) for c in range(32, 127)] + ["\n"]
  vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", ".\n"] + chars)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\.\n|."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_labels_sit_on_each_steps_last_token_by_character_offsets():
  sol = parse_step_row({"prompt": "q", "steps": ["ab.", "c.", "de"], "labels": [1, 0, 0.25]},
                       0, "train")
  for tok, delim in ((build_char_tokenizer(), ";"), (_merging_tokenizer(), "\n")):
    enc = encode_steps(tok, sol, delimiter=delim)
    text = tok.decode(enc.ids)
    assert text == f"ab.{delim}c.{delim}de{delim}"
    # The token holding each step's last character (its delimiter), merged or not.
    pieces = [tok.decode([i]) for i in enc.ids]
    ends = np.cumsum([len(p) for p in pieces])
    np.testing.assert_array_equal(ends[enc.positions], [4, 7, 10])
    np.testing.assert_allclose(enc.labels, [1.0, 0.0, 0.25])
  merged = encode_steps(_merging_tokenizer(), sol, delimiter="\n")
  assert len(merged.ids) == 8 and merged.positions.tolist() == [2, 4, 7]
  # A truncated solution: the cut-off last step is unlabelled.
  cut = encode_steps(build_char_tokenizer(), sol, delimiter=";", max_tokens=8)
  assert cut.positions.tolist()[:2] == [3, 6] and cut.positions[2] == -1


def test_step_rows_validate_and_map_ratings():
  row = {"prompt": "p", "steps": ["a", "", "b"], "labels": [1, 0, -1]}
  sol = parse_step_row(row, 0, "train", ratings=True, neutral="positive")
  assert sol.steps == ("a", "b") and sol.labels == (1.0, 0.0)  # the empty step merged into "a"
  sol = parse_step_row({"prompt": "p", "steps": ["a", "b"], "labels": [0, 1]}, 0, "train",
                       ratings=True, neutral="drop")
  assert sol.labels == (None, 1.0)
  for bad, match in ((["x"], "row 3: expected a mapping"),
                     ({"prompt": "p", "steps": "a", "labels": [1]}, "row 3 field 'steps'"),
                     ({"prompt": "p", "steps": ["a"], "labels": [1, 0]}, "row 3 field 'labels'"),
                     ({"prompt": "p", "steps": ["a"], "labels": [2]}, r"row 3 field 'labels'\[0\]"),
                     ({"prompt": "p", "steps": ["a"]}, "row 3 field 'labels': missing"),
                     ({"prompt": "", "steps": ["a"], "labels": [1]}, "row 3 field 'prompt'")):
    with pytest.raises(BadRowError, match=match):
      parse_step_row(bad, 3, "train")


def test_chain_traces_get_exact_step_labels():
  sol = chain_step_labels("7+15-9=", "7+15=22;22-9=13;Answer: 13")
  assert sol.labels == (1.0, 1.0, 1.0)
  sol = chain_step_labels("7+15-9=", "7+15=21;21-9=12;Answer: 12")
  assert sol.labels == (0.0, 0.0, 0.0)  # everything after the first wrong step is wrong
  sol = chain_step_labels("7+15-9=", "7+15=22;22-9=14;Answer: 13")
  assert sol.labels == (1.0, 0.0, 0.0)


def test_prm_loss_and_solution_scores():
  logits = jnp.asarray([[0.0, 2.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
  positions = jnp.asarray([[1, 3], [0, -1]])
  labels = jnp.asarray([[1.0, 0.0], [0.5, jnp.nan]])
  loss, diag = process.prm_loss(logits, positions, labels)
  want = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)),
                  np.log1p(np.exp(3.0)) - 0.5 * 3.0])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert diag["steps"] == 3
  last, _ = process.prm_loss(logits, positions, labels, last_step_only=True)
  np.testing.assert_allclose(last, np.mean([np.log1p(np.exp(-1.0)),
                                            np.log1p(np.exp(3.0)) - 1.5]), rtol=1e-6)
  p = jnp.asarray([[0.9, 0.5, 0.8], [0.2, 1.0, 0.0]])
  valid = jnp.asarray([[True, True, True], [True, True, False]])
  np.testing.assert_allclose(process.solution_scores(p, valid, "product"), [0.36, 0.2], rtol=1e-6)
  np.testing.assert_allclose(process.solution_scores(p, valid, "min"), [0.5, 0.2], rtol=1e-6)
  np.testing.assert_allclose(process.solution_scores(p, valid, "last"), [0.8, 1.0], rtol=1e-6)
  scores = process.solution_scores(p, valid, "min")
  assert int(jnp.argmax(scores)) == 0  # best-of-N picks the maximum


def test_grpo_process_supervision_with_different_step_counts():
  rewards = jnp.asarray([[1.0, 0.0, jnp.nan], [1.0, 1.0, 1.0], [0.0, jnp.nan, jnp.nan]])
  positions = jnp.asarray([[1, 3, -1], [0, 1, 4], [2, -1, -1]])
  mask = jnp.ones((3, 5), bool)
  adv, _ = process.grpo_process_advantages(rewards, positions, jnp.zeros(3, jnp.int32), mask,
                                           num_groups=1)
  r = np.asarray([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # the group's six step rewards
  z = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
  want = np.zeros((3, 5))
  steps = [[(1, z[0]), (3, z[1])], [(0, z[2]), (1, z[3]), (4, z[4])], [(2, z[5])]]
  for i, row in enumerate(steps):
    for t in range(5):
      want[i, t] = sum(v for pos, v in row if pos >= t)
  np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
  # Gradient-free: a pure function of rewards, jittable.
  jax.jit(process.grpo_process_advantages, static_argnames="num_groups")(
      rewards, positions, jnp.zeros(3, jnp.int32), mask, num_groups=1)
