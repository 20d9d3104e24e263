"""Reports on finished (or unfinished) runs: an HTML page with PNG plots, and optional TensorBoard logging.

``fedrec report RUN_DIR [RUN_DIR ...] --out report/report.html`` reads each run's ``config.json``,
``history.jsonl`` and ``metrics.json`` (see :mod:`fedrec.runtime.trainer`) and writes the page and its
plots into one folder. :mod:`fedrec.report.runs` holds the pure part (reading runs, picking series,
the comparison table); :mod:`fedrec.report.plots` draws; :mod:`fedrec.report.build` puts them together.
"""
