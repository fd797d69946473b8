"""Metric metadata through the registry, the typed run record and the report pipeline (issue 14, items 1-3).

* a metric defined outside the package (``examples/plugin/mae_metric.py``, copied to a temporary folder)
  and named by ``module:Class`` in a suite is in leaderboard.md, the CSV leaderboard and report.md with
  intervals, and ``--sort`` orders rows by its own direction;
* no module of ``harness/`` imports a module that imports it back (walked with ``ast``);
* a report loads the records once and bootstraps once per (row, per-video metric);
* a report of the results folder in a process where the plugin's module cannot be imported keeps its column,
  title and arrow (issue 25, item 3);
* ``metrics.json`` files written before ``metric_refs``/``per_video`` existed give the same leaderboard;
* training curves: ``losses.csv`` per run folder, TensorBoard event files (``train.log_with``), a loss-curve plot.
"""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "plugin" / "mae_metric.py"
METRIC = "mae_metric:MAE"


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny suite of two tokenizers scored with psnr and the plugin metric, run through the CLI."""
    tmp = tmp_path_factory.mktemp("metric_plugin")
    plugins = tmp / "plugins"
    plugins.mkdir()
    shutil.copy(EXAMPLE, plugins / "mae_metric.py")  # outside the package: importable only through PYTHONPATH
    suite = {
        "name": "tiny_metric", "seed": 0, "output_dir": str(tmp / "results"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 16},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_with": "tensorboard"},
        "evaluate": {"metrics": ["psnr", METRIC], "batch_size": 3},
        "tokenizers": [{"id": "grid3d_a", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}},
                       {"id": "grid3d_b", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 4}}],
    }
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("run", str(tmp / "suite.yaml"), "-q", env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return tmp / "results", env


def test_every_registered_metric_describes_itself():
    from harness_core.registry import METRICS, metric_spec

    for name in METRICS.names():
        cls, spec = METRICS.get(name), metric_spec(name)
        assert "title" in vars(cls) or any("title" in vars(base) for base in cls.__mro__[1:-1] if base.__name__ != "VideoMetric"), name
        assert spec.key == name and spec.title and isinstance(spec.digits, int), name
        if not spec.per_video:
            assert spec.min_comparable_n and spec.higher_is_better is not None, name
    assert metric_spec("psnr").higher_is_better is True and metric_spec("lpips").higher_is_better is False
    assert metric_spec("dynamics").higher_is_better is None  # an analysis feature: not ranked
    assert metric_spec("fvd_16f").for_generation().header == "gFVD 16f ↓"


def test_one_not_comparable_threshold():
    """``MIN_COMPARABLE_N`` is assigned once (metrics/base.py); everything else imports it."""
    from harness.generation import stage
    from metrics import base, fvd

    assigned = []
    for path in [*(REPO / "harness").rglob("*.py"), *(REPO / "metrics").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                assigned += [str(path.relative_to(REPO)) for t in targets if isinstance(t, ast.Name) and "MIN_COMPARABLE_N" in t.id]
    assert assigned == ["metrics/base.py"]
    assert stage.MIN_COMPARABLE_N is base.MIN_COMPARABLE_N and fvd.FVD.min_comparable_n == base.MIN_COMPARABLE_N


def test_readme_metric_example_is_the_file_the_test_runs():
    readme = (REPO / "README.md").read_text()
    source = EXAMPLE.read_text()
    start = source.index("class MAE")
    assert textwrap.dedent(source[start:]).strip() in readme
    assert f"name: {METRIC}" in readme or f"- {METRIC}" in readme


@pytest.mark.slow
def test_plugin_metric_in_leaderboard_csv_and_report_sorted_by_its_direction(plugin_run):
    results, env = plugin_run
    values = {row: json.loads((results / row / "metrics.json").read_text())["metrics"]["mae"] for row in ("grid3d_a", "grid3d_b")}
    assert values["grid3d_a"] != values["grid3d_b"]
    board = (results / "leaderboard.md").read_text()
    report = (results / "report.md").read_text()
    for text in (board, report):
        assert "MAE ↓" in text
        for row, value in values.items():
            line = next(line for line in text.splitlines() if line.startswith(f"| {row} ") and "±" in line)
            assert f"{value:.4f} ± " in line  # the plugin's digits, with a bootstrap interval
    out = run_cli("leaderboard", str(results), "--format", "csv", "--sort", "mae", env=env)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(io.StringIO(out.stdout))
    assert {"mae", "mae_ci_low", "mae_ci_high", "mae_ci_half_width"} <= set(table.columns)
    assert (table["mae_ci_low"] <= table["mae"]).all() and (table["mae"] <= table["mae_ci_high"]).all()
    assert table["row"].tolist() == sorted(values, key=values.get)  # lower is better: ascending
    psnr = run_cli("leaderboard", str(results), "--format", "json", "--sort", "psnr", env=env)
    rows = json.loads(psnr.stdout)
    assert [r["psnr"] for r in rows] == sorted((r["psnr"] for r in rows), reverse=True)  # higher is better: descending
    md = run_cli("leaderboard", str(results), "--metric", "mae", "--sort", "mae", env=env)
    assert md.returncode == 0, md.stderr
    order = [row for line in md.stdout.splitlines() for row in values if line.startswith(f"| {row} ")]
    assert order == sorted(values, key=values.get)


@pytest.mark.slow
def test_report_loads_records_once_and_bootstraps_once_per_row_and_metric(plugin_run, monkeypatch):
    results, env = plugin_run
    sys.path.insert(0, env["PYTHONPATH"].split(os.pathsep)[0])  # the plugin class, for its metadata
    try:
        from harness import records
        from harness.report import write_reports
        from harness.reports import stats

        calls = {"load": 0, "bootstrap": []}
        load, bootstrap = records.load_records, stats.bootstrap_ci

        def counting_load(*args, **kwargs):
            calls["load"] += 1
            return load(*args, **kwargs)

        def counting_bootstrap(values, *args, **kwargs):
            calls["bootstrap"].append(len(values))
            return bootstrap(values, *args, **kwargs)

        monkeypatch.setattr(records, "load_records", counting_load)
        monkeypatch.setattr(stats, "bootstrap_ci", counting_bootstrap)
        paths = write_reports(results)
    finally:
        sys.path.pop(0)
    assert results / "report.html" in paths and results / "quality_vs_tokens.png" in paths
    assert calls["load"] == 1
    assert len(calls["bootstrap"]) == 2 * 2  # two rows x (psnr, mae); the leaderboard, report and plot share them


@pytest.mark.slow
def test_a_report_needs_no_metric_code(plugin_run, tmp_path, monkeypatch):
    """Issue 25 item 3: the suite ran in a process with the plugin on ``PYTHONPATH``; in this one its module cannot be
    imported, and a report of the results folder still shows the metric's column, title and direction arrow, read
    from the recorded ``metric_specs``."""
    results, env = plugin_run
    plugins = env["PYTHONPATH"].split(os.pathsep)[0]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != plugins])
    monkeypatch.delitem(sys.modules, METRIC.partition(":")[0], raising=False)
    from harness import report
    from harness_core.registry import METRICS

    with pytest.raises(ImportError):
        METRICS.get(METRIC)
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.npy", "*.pt", "*.gif", "*.png"))
    specs = {s["key"]: s for s in json.loads((copy / "grid3d_a" / "metrics.json").read_text())["metric_specs"]}
    assert specs["mae"]["higher_is_better"] is False and specs["mae"]["reference"] == METRIC
    data = report.ReportData.load(copy)
    assert data.spec("mae").header == "MAE ↓" and not data.unresolved and not data.notes
    board = report.write_leaderboard(data).read_text()
    assert "MAE ↓" in board and "PSNR ↑" in board


@pytest.mark.slow
def test_old_metrics_json_without_refs_reads_the_same(plugin_run, tmp_path):
    """A ``metrics.json`` as written before ``metric_refs``/``per_video``: built-in columns come out identical."""
    results, _ = plugin_run
    from harness.records import load_records
    from harness.reports.data import ReportData
    from harness.reports.leaderboard import leaderboard_rows

    old = tmp_path / "old"
    shutil.copytree(results, old, ignore=shutil.ignore_patterns("*.npy", "*.pt", "*.gif", "*.png"))
    for path in old.glob("*/metrics.json"):
        data = json.loads(path.read_text())
        data.pop("metric_refs"), data.pop("per_video")
        data["metrics"] = {k: v for k, v in data["metrics"].items() if not k.startswith("mae")}
        path.write_text(json.dumps(data))
    new_rows = leaderboard_rows(ReportData.of(load_records(results)))
    old_rows = leaderboard_rows(ReportData.of(load_records(old)))
    strip = lambda row: {k: v for k, v in row.items() if not k.startswith("mae") and k != "suite"}  # noqa: E731
    assert [strip(r) for r in old_rows] == [strip(r) for r in new_rows]
    assert old_rows[0]["psnr_ci_half_width"] > 0


@pytest.mark.slow
def test_readme_plot_example_is_one_function_that_reaches_the_report(plugin_run, tmp_path, monkeypatch):
    results, env = plugin_run
    from harness.report import write_reports
    from harness.reports import plots

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Adding a plot"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n\n")]
    monkeypatch.setattr(plots, "PLOTS", list(plots.PLOTS))  # the example registers into a copy
    exec(compile(code, "README.md", "exec"), vars(plots))  # one function, in the plots module
    folder = tmp_path / "copy"
    shutil.copytree(results, folder, ignore=shutil.ignore_patterns("*.pt", "*.gif", "*.png"))
    sys.path.insert(0, env["PYTHONPATH"].split(os.pathsep)[0])
    try:
        paths = write_reports(folder)
    finally:
        sys.path.pop(0)
    assert folder / "psnr_vs_params.png" in paths
    assert "## PSNR vs parameters" in (folder / "report.md").read_text()
    assert (folder / "report.html").read_text().count("src='data:image/png;base64,") == 5  # quality vs tokens, per-frame curves, rate-distortion, loss curves + this


# --------------------------------------------------------------------------- imports


#: the packages of the repository, each importing only those to its left (harness_core <- metrics <-
#: video_tokenizers <- harness): the one-way boundaries of issue 25
PACKAGES = ("harness_core", "metrics", "video_tokenizers", "harness")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (type-only imports run nothing)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph(packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> modules of ``packages`` it imports anywhere in its file (top level or inside functions), except
    imports for type annotations only (``if TYPE_CHECKING:``)."""
    files = {_module_name(p): p for package in packages for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages its modules import."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        top = module.split(".")[0]
        out.setdefault(top, set()).update(d.split(".")[0] for d in deps if d.split(".")[0] != top)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_walker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "harness.reports.document" in graph["harness.report"]  # the walker sees real imports
    assert "harness_core.api" in graph["metrics.base"] and "harness_core.layers" in graph["harness.generation.sit"]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\n")
    imported = {a.name for n in _runtime_nodes(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported == {"y"}  # a type-only import is not a runtime edge


def test_no_module_imports_a_module_that_imports_it_back():
    """No import cycle inside or between harness_core, metrics, video_tokenizers and harness (issue 25 item 4)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_packages_import_one_way():
    """harness_core imports none of the others, metrics only the core, video_tokenizers the core and metrics (its
    perceptual losses), harness everything: each package imports only packages to its left in PACKAGES."""
    packages = package_graph(import_graph())
    for index, package in enumerate(PACKAGES):
        assert packages.get(package, set()) <= set(PACKAGES[:index]), (package, packages.get(package))
    assert find_cycle(packages) is None


@pytest.mark.slow
def test_training_curves_reach_tensorboard_and_the_report(plugin_run):
    """``train.log_with: tensorboard`` writes event files in the run folder; ``losses.csv`` feeds the report's plot."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results, _ = plugin_run
    for run in ("grid3d_a", "grid3d_b"):
        losses = pd.read_csv(results / run / "losses.csv")
        assert list(losses["step"]) == [1, 2] and {"loss", "lr"} <= set(losses.columns)
        assert losses["loss"].notna().all() and (losses["lr"] == 1e-4).all()
        events = list((results / run / "tensorboard").rglob("events.out.tfevents.*"))
        assert events, f"no TensorBoard event file under {results / run}"
        accumulator = EventAccumulator(str(events[0].parent))
        accumulator.Reload()
        logged = accumulator.Scalars("train/loss")
        assert [e.step for e in logged] == [2] and logged[0].value == pytest.approx(losses["loss"].iloc[1], rel=1e-6)
    assert (results / "loss_curves.png").is_file()
    assert "Training loss curves" in (results / "report.md").read_text()
