"""Command line: ``python -m harness {run,protocol,list,leaderboard,plot,report,compare,profile}``.

Exit codes (:func:`harness_core.errors.run_command`): 0 on success; 2 with one ``error:`` line on stderr for an
expected error (a :class:`harness_core.errors.HarnessError`: bad input, suite, data, weights or results folder);
1 with the traceback for anything else (out of memory, a bug). ``-v`` also prints the traceback of an expected
error. A sub-command whose module fails to import is reported on stderr and left out; the others work.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from harness.params import PAPER_SUITE
from harness_core.errors import ResultsError, run_command

#: modules that add their own sub-command (``add_parser(subparsers)``)
SUBCOMMAND_MODULES = ("harness.compare", "harness.profile")


def _run(args: argparse.Namespace) -> int:
    from harness.config import load_suite
    from harness.runner import SuiteRunner

    suite = load_suite(args.suite, overrides=args.set or [], only=args.only.split(",") if args.only else None)
    if args.output_dir:
        suite = suite.model_copy(update={"output_dir": args.output_dir})
    results = SuiteRunner(suite, show_progress=not args.quiet).run()
    print(f"results: {results}")
    print(f"leaderboard: {results / 'leaderboard.md'}")
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from harness.config import load_suite
    from harness.protocol import protocol_card

    suite = load_suite(args.suite, overrides=args.set or [], check_data=False)
    print(protocol_card(suite, args.suite), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness_core.registry import DATASETS, GENERATORS, METRICS, PRESETS, TOKENIZERS

    for title, registry in (("tokenizers", TOKENIZERS), ("metrics", METRICS), ("datasets", DATASETS), ("generators", GENERATORS)):
        try:
            items = list(registry)
        except ImportError as err:
            print(f"{title}: unavailable ({err})")
            continue
        rows = [(name, f"{obj.__module__}:{obj.__qualname__}", (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else "")
                for name, obj in items]
        print(f"\n{title}:")
        print(tabulate(rows, headers=["name", "class", "summary"]))
    try:
        presets = [preset for _, preset in PRESETS]
    except ImportError as err:
        print(f"presets: unavailable ({err})")
    else:
        print("\npresets (harness_core.registry.create_preset):")
        print(tabulate([(p.name, p.family, p.summary) for p in presets], headers=["name", "family", "settings"]))
    if args.params:
        print(f"\nparameters of the configurations of {args.params} (built on the meta device; without the "
              "discriminator, which is its own column):")
        print(tabulate(_parameter_rows(args.params), headers=["entry", "tokenizer", "parameters (M)", "discriminator (M)",
                                                             "published (M)", "published source"], floatfmt=".1f"))
        print("\nCoordTok sizes (supplementary Table 5) at 1280 tokens:")
        coordtok = importlib.import_module("video_tokenizers.coordtok")
        print(tabulate([(size, count / 1e6) for size, count in coordtok.coordtok_param_counts().items()],
                       headers=["size", "parameters (M)"], floatfmt=".1f"))
    return 0


def _parameter_rows(suite: str) -> list[tuple]:
    from harness.params import suite_parameter_counts

    return [(r.entry, r.tokenizer, r.parameters / 1e6, r.discriminator / 1e6 if r.discriminator else "",
             r.published / 1e6 if r.published else "", r.source) for r in suite_parameter_counts(suite)]


def _leaderboard(args: argparse.Namespace) -> int:
    from harness import report

    data = report.ReportData.load(Path(args.results))  # the records are read once
    if not data.records:
        raise ResultsError(f"no metrics.json under {args.results}: run a suite first")
    metrics = [m for item in args.metric or [] for m in item.split(",") if m]
    if args.format == "markdown" and not metrics and not args.sort:
        path = report.write_leaderboard(data)
        print(path.read_text())
        return 0
    rows = report.sort_rows(report.leaderboard_rows(data), args.sort, specs=data.ranked)
    print(report.render_leaderboard(rows, metrics or None, args.format, specs=data.ranked),
          end="" if args.format != "markdown" else "\n")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from harness import report

    paths = report.write_plots(Path(args.results))
    if not paths:
        raise ResultsError(f"nothing to plot under {args.results}: run a suite first")
    for path in paths:
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness import report

    paths = report.write_reports(Path(args.results))
    for path in paths:
        if path.name in ("report.md", "report.html"):
            print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark and evaluation harness for video tokenizers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite: train -> reconstruct -> evaluate -> generate -> report")
    run.add_argument("suite", help="suite YAML file")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key (repeatable); tokenizers by id")
    run.add_argument("--only", metavar="IDS", help="comma-separated tokenizer ids to run (plus the runs they reference)")
    run.add_argument("--output-dir", help="results folder (default: results/<suite name>)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    proto = sub.add_parser("protocol", help="print a suite's protocol card (data, clips, metrics, recipes) without running it")
    proto.add_argument("suite", help="suite YAML file")
    proto.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key (repeatable)")
    proto.set_defaults(func=_protocol)

    lst = sub.add_parser("list", help="registered tokenizers, metrics, datasets, generators and model presets")
    lst.add_argument("--params", nargs="?", const=str(PAPER_SUITE), metavar="SUITE",
                     help="also print the parameter counts of a suite's configurations (default: the paper suite)")
    lst.set_defaults(func=_list)

    board = sub.add_parser("leaderboard", help="print the leaderboard of every run under a results folder (recursively)")
    board.add_argument("results", help="a suite's results folder, or a folder of several suites and runs")
    board.add_argument("--metric", action="append", metavar="NAMES",
                       help="metric columns to show, comma-separated or repeated (psnr, fvd_16f, gfvd_16f, a plugin metric...; default all)")
    board.add_argument("--sort", metavar="METRIC", help="sort best first by this metric, in its own direction (default: suite, tokens per video)")
    board.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown",
                       help="markdown shows value ± 95%% CI half-width; csv/json give the numbers (default markdown; "
                            "the default call also writes <results>/leaderboard.md)")
    board.set_defaults(func=_leaderboard)

    plot = sub.add_parser("plot", help="write the quality-vs-tokens (Pareto), analysis and cost plots of a results folder")
    plot.add_argument("results")
    plot.set_defaults(func=_plot)

    rep = sub.add_parser("report", help="rebuild report.md and report.html (leaderboard, protocol, plots, gallery) of a suite")
    rep.add_argument("results", help="the suite's results folder, e.g. results/samples_cpu")
    rep.set_defaults(func=_report)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as err:  # a missing optional dependency: the other sub-commands still work
            text = " ".join(str(err).split())
            print(f"warning: sub-command {name.rpartition('.')[2]!r} unavailable: {name} failed to import: "
                  f"{type(err).__name__}: {text}", file=sys.stderr)
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_command(lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
