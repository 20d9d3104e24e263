"""The report's HTML: one Jinja2 template (autoescaped) filled from a :class:`ReportPage`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment

from fedrec.report.runs import Table


@dataclass(frozen=True)
class PlotFile:
    """A written PNG: its title, its path relative to the HTML file, and a caption."""

    title: str
    src: str
    caption: str = ""


@dataclass(frozen=True)
class RunSection:
    label: str
    status: str
    finished: bool
    summary: list[tuple[str, str]]
    plots: list[PlotFile]
    notes: list[str]
    config_json: str


@dataclass(frozen=True)
class ReportPage:
    title: str
    runs: list[RunSection]
    table: Table
    table_labels: list[str]
    table_finished: list[bool]
    comparisons: list[PlotFile] = field(default_factory=list)
    comparison_notes: list[str] = field(default_factory=list)


def format_value(value: Any) -> str:
    """Floats to 4 decimals (scientific when tiny), integers with thousands separators, missing as a dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ page.title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
 h3 { font-size: 1.05rem; }
 table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
 .scroll { overflow-x: auto; }
 th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
 th.text, td.text { text-align: left; }
 td.best { font-weight: bold; background: #e3f4e1; }
 tr.unfinished td { color: #777; font-style: italic; }
 dl.summary { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; }
 dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
 .plots { display: flex; flex-wrap: wrap; gap: 1rem; }
 figure { margin: 0; flex: 1 1 480px; max-width: 540px; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
 figcaption { font-size: .85rem; color: #555; }
 .note { color: #555; font-style: italic; }
 pre { background: #f6f6f6; padding: .5rem; overflow-x: auto; font-size: .8rem; }
</style>
</head>
<body>
<h1>{{ page.title }}</h1>

<h2 id="comparison">Final metrics</h2>
<div class="scroll"><table class="comparison">
 <thead><tr><th class="text">run</th><th class="text">status</th>{% for column in page.table.columns %}<th>{{ column.key }}</th>{% endfor %}</tr></thead>
 <tbody>
 {% for row in page.table.rows %}{% set r = loop.index0 %}
 <tr class="{{ 'finished' if page.table_finished[r] else 'unfinished' }}" data-run="{{ page.table_labels[r] }}">
  <td class="text">{{ page.table_labels[r] }}</td><td class="text">{{ page.runs[r].status }}</td>
  {% for value in row %}{% set c = loop.index0 %}<td data-key="{{ page.table.columns[c].key }}"{% if value is not none %} data-value="{{ value }}"{% endif %}{% if r in page.table.best[c] %} class="best" title="best"{% endif %}>{{ value | fmt }}{% if r in page.table.best[c] %} &#9733;{% endif %}</td>{% endfor %}
 </tr>
 {% endfor %}
 </tbody>
</table></div>
<p class="note">&#9733; marks the best value per column among finished runs (lower rmse, mae, epsilon, seconds and bytes;
higher ranking metrics; bytes among federated runs only). Unfinished runs show the latest values in their history.</p>

{% if page.comparisons or page.comparison_notes %}
<h2 id="federated-vs-centralised">Federated vs centralised</h2>
{% for note in page.comparison_notes %}<p class="note">{{ note }}</p>{% endfor %}
<div class="plots">
{% for plot in page.comparisons %}
<figure><img src="{{ plot.src }}" alt="{{ plot.title }}"><figcaption>{{ plot.caption }}</figcaption></figure>
{% endfor %}
</div>
{% endif %}

{% for run in page.runs %}
<h2 id="run-{{ loop.index }}">{{ run.label }}</h2>
<dl class="summary">{% for name, value in run.summary %}<dt>{{ name }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>
{% for note in run.notes %}<p class="note">{{ note }}</p>{% endfor %}
<div class="plots">
{% for plot in run.plots %}
<figure><img src="{{ plot.src }}" alt="{{ plot.title }}"><figcaption>{{ plot.caption }}</figcaption></figure>
{% endfor %}
</div>
<details><summary>config.json</summary><pre>{{ run.config_json }}</pre></details>
{% endfor %}
</body>
</html>
"""


def render_page(page: ReportPage) -> str:
    """The report as one HTML document (values escaped)."""
    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["fmt"] = format_value
    return environment.from_string(TEMPLATE).render(page=page)
