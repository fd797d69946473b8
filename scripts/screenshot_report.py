"""Render a suite's report.html in headless Chromium: screenshot and decoded-image count.

    python scripts/screenshot_report.py results/samples_cpu [--out report.png] [--width 1400] [--height 3000]

Needs Debian's chromium (``apt-get install chromium``). Prints the screenshot
path and how many of the page's embedded images (plots, GIFs) decoded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.reports.browser import decoded_images, screenshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a suite's results folder (holding report.html) or the html file itself")
    parser.add_argument("--out", help="screenshot PNG (default <results>/report_screenshot.png)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    html = Path(args.results)
    html = html / "report.html" if html.is_dir() else html
    if not html.is_file():
        print(f"error: {html} not found: run `python -m harness report <results>` first", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else html.parent / "report_screenshot.png"
    print(f"screenshot: {screenshot(html, out, args.width, args.height)}")
    decoded, total = decoded_images(html)
    print(f"images decoded: {decoded}/{total}")
    return 0 if decoded == total else 1


if __name__ == "__main__":
    sys.exit(main())
