"""The project's own algorithm reference: every section the code cites exists."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_section_of_the_algorithm_reference_exists():
  with open(os.path.join(REPO, "docs", "algorithms.md"), encoding="utf-8") as f:
    headings = set(re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", f.read(), re.M))
  cited = {}
  for root in ("jaxrl_llm", "experiments", "benchmarks", "tests"):
    for dirpath, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith((".py", ".md")):
          path = os.path.join(dirpath, name)
          with open(path, encoding="utf-8") as f:
            for section in re.findall(r"docs/algorithms\.md §([0-9]+(?:\.[0-9]+)?)", f.read()):
              cited.setdefault(section, path)
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    for section in re.findall(r"docs/algorithms\.md §([0-9]+(?:\.[0-9]+)?)", f.read()):
      cited.setdefault(section, "README.md")
  assert len(cited) > 20
  missing = {s: p for s, p in cited.items() if s not in headings}
  assert not missing, f"cited sections without a heading in docs/algorithms.md: {missing}"
  # No citation of a specification outside the repository.
  for root in ("jaxrl_llm", "experiments"):
    for dirpath, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith(".py"):
          with open(os.path.join(dirpath, name), encoding="utf-8") as f:
            assert "ALGORITHMS.md" not in f.read(), name
