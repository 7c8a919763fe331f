"""``jaxrl-llm report RUN``: one self-contained HTML page about a run, to attach to a note.

The page holds, in order: what the run is (experiment, algorithm, model, steps, checkpoint), the
held-out numbers (``eval.json`` and ``eval_before.json``), the final logged training metrics, all
training curves (:func:`jaxrl_llm.train.plotting.plot_run`), every analysis present in
``RUN/analysis`` (its JSON's scalar fields and its plot), the config fields that differ from the
experiment's defaults and the whole config. Images are embedded as base64 PNG, so the file needs
no server and no sibling files.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from typing import Callable

from jaxrl_llm.analysis.compare import NoMetricsError, config_differences, load_series

# The final-metrics table: these first (when present), then the rest of the last row.
_FIRST = ("reward/accuracy", "reward/mean", "train/loss", "train/entropy", "actor/entropy",
          "kl/ref", "response/length_mean", "train/cov")


def _img(path: str, alt: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, (dict, list)):
    return html.escape(json.dumps(v)[:200])
  return html.escape(str(v))


def _table(rows, header=("", "")) -> str:
  body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
  return (f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
          f"{body}</table>")


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1em} td,th{border:1px solid #ddd;padding:.2em .6em;
font-size:.9em;text-align:left} td:nth-child(2){font-family:monospace}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} pre{background:#f6f6f6;padding:.8em;
overflow-x:auto;font-size:.8em} .muted{color:#777}
"""


def report(run_dir: str, *, out: str | None = None,
           defaults: Callable[[str], dict | None] | None = None) -> str:
  """Writes the page (default ``RUN/report.html``) and returns its path.

  Args:
    defaults: experiment name -> its default config dict (for the "differs from the experiment"
      table), or None when unknown.
  Raises:
    NoMetricsError: ``run_dir`` has no metrics (not a run, or not started).
  """
  from jaxrl_llm.train.plotting import plot_run
  from jaxrl_llm.train.tracking import read_metrics

  series = load_series(run_dir)  # raises NoMetricsError for a directory that is not a run
  config = _read_json(os.path.join(run_dir, "config.json")) or {}
  name = config.get("experiment") or os.path.basename(os.path.normpath(run_dir))
  last = read_metrics(run_dir)[-1]  # load_series above has checked there is a row
  checkpoints = os.path.join(run_dir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit()) if os.path.isdir(
      checkpoints) else []
  model = config.get("model", {})
  parts = [f"<h1>{html.escape(name)}</h1>",
           f'<p class="muted">{html.escape(os.path.abspath(run_dir))}</p>']
  summary = [("experiment", name), ("algorithm", config.get("algorithm", {}).get("name", "?")),
             ("seed", config.get("seed", "?")),
             ("model", f"d_model {model.get('d_model')}, {model.get('n_layers')} layers, "
                       f"{model.get('n_heads')} heads, params {model.get('param_dtype')}, "
                       f"compute {model.get('dtype')}"),
             ("steps logged", f"{last.get('step')} (of train.steps = "
                              f"{config.get('train', {}).get('steps', '?')})"),
             ("checkpoints", ", ".join(map(str, steps)) or "none")]
  parts += ["<h2>Run</h2>", _table(summary, ("", ""))]

  held = _read_json(os.path.join(run_dir, "eval.json"))
  before = _read_json(os.path.join(run_dir, "eval_before.json")) or {}
  parts.append("<h2>Held-out results</h2>")
  if held:
    rows = [(k, held[k]) for k in sorted(held) if isinstance(held[k], (int, float, str))]
    rows += [(f"{k} (before training)", v) for k, v in sorted(before.items())
             if isinstance(v, (int, float)) and k not in held]
    parts.append(_table(rows, ("metric", "value")))
  else:
    parts.append('<p class="muted">no eval.json: the run has not finished (held-out numbers '
                 "are written at the end)</p>")

  keys = [k for k in _FIRST if k in last] + sorted(
      k for k in last if k not in _FIRST and k != "step" and not k.startswith("data/"))
  parts += [f"<h2>Training metrics at step {last.get('step')}</h2>",
            _table([(k, last[k]) for k in keys], ("metric", "value"))]

  with tempfile.TemporaryDirectory() as tmp:
    curves = plot_run(run_dir, os.path.join(tmp, "curves.png"), dpi=60)  # a page, not a poster
    parts += ["<h2>Curves</h2>", _img(curves, "training curves")]

  analysis_dir = os.path.join(run_dir, "analysis")
  found = sorted(f for f in os.listdir(analysis_dir) if f.endswith(".json")) if os.path.isdir(
      analysis_dir) else []
  parts.append("<h2>Analyses</h2>")
  if not found:
    parts.append('<p class="muted">none yet: <code>jaxrl-llm analyze sparsity RUN</code>, '
                 "<code>jaxrl-llm analyze entropy RUN</code></p>")
  for fname in found:
    stem = fname[:-5]
    data = _read_json(os.path.join(analysis_dir, fname))
    parts.append(f"<h3>{html.escape(stem)}</h3>")
    if isinstance(data, dict):
      scalars = [(k, v) for k, v in data.items() if isinstance(v, (int, float, str))]
      parts.append(_table(scalars, ("field", "value")))
    png = os.path.join(analysis_dir, stem + ".png")
    if os.path.exists(png):
      parts.append(_img(png, stem))

  parts.append("<h2>Config</h2>")
  base = defaults(name) if defaults else None
  if base is not None:
    diff = config_differences(config, base)
    parts.append(f"<p>Fields that differ from the experiment <code>{html.escape(name)}</code>'s "
                 "defaults:</p>")
    parts.append(_table(sorted(diff.items()), ("field", "value")) if diff else
                 "<p class='muted'>none</p>")
  parts.append("<details><summary>the whole config.json</summary><pre>"
               f"{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>")
  data_report = _read_json(os.path.join(run_dir, "data_report.json"))
  if data_report:
    parts.append("<details><summary>data_report.json</summary><pre>"
                 f"{html.escape(json.dumps(data_report, indent=1, sort_keys=True))}</pre>"
                 "</details>")
  logged = len({s for points in series.values() for s, _ in points})
  parts.append(f'<p class="muted">{len(series)} metrics over {logged} logged steps; written by '
               "<code>jaxrl-llm report</code>.</p>")
  page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
          f"<title>{html.escape(name)} - jaxrl_llm report</title><style>{_STYLE}</style></head>"
          f"<body>{''.join(parts)}</body></html>")
  out = out or os.path.join(run_dir, "report.html")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    f.write(page)
  return out


__all__ = ["NoMetricsError", "report"]
