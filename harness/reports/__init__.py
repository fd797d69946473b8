"""Report building blocks behind :mod:`harness.report`.

* :mod:`harness.reports.stats`: bootstrap confidence intervals, Spearman
  correlations, Pareto fronts, per-video tables;
* :mod:`harness.reports.plots`: analysis (CoordTok supp. B.3), quality vs tokens
  with the Pareto front, cost vs video length;
* :mod:`harness.reports.gallery`: original | reconstruction GIFs;
* :mod:`harness.reports.document`: ``report.md`` and the self-contained ``report.html``;
* :mod:`harness.reports.browser`: headless-Chromium screenshot and image check of ``report.html``.

Everything reads only files a suite run wrote, never a model.
"""
