"""Reports of a results folder: load the run records once -> sections -> markdown and HTML.

* :mod:`harness.reports.data`: :class:`ReportData`, the records (read once), their metric columns from the
  registry's metadata, per-video tables and bootstrap intervals (each computed once);
* :mod:`harness.reports.leaderboard`: leaderboard numbers, main and cost tables, the protocol card;
* :mod:`harness.reports.plots`: the plots, each one function registered in ``PLOTS``;
* :mod:`harness.reports.gallery`: original | reconstruction GIFs;
* :mod:`harness.reports.document`: the list of sections and its markdown and HTML (Jinja2) renderers;
* :mod:`harness.reports.stats`: bootstrap intervals, Spearman correlations, Pareto fronts;
* :mod:`harness.reports.browser`: headless-Chromium screenshot and image check of ``report.html``.

Nothing here imports :mod:`harness.report` (the public entry points), which imports this package.
Everything reads only files a suite run wrote, never a model.
"""
