"""``python -m harness compare REAL_DIR RECON_DIR``: metrics between two folders of videos matched by name.

The TokenBench use case (docs/research/eval_anchors.md B.1): reconstructions were made
elsewhere, and this scores them with the harness's own metrics and protocols
(rFVD with the original I3D, PSNR/SSIM per frame, LPIPS with the original
weights). Files are matched by name without extension (``a.mp4`` in REAL_DIR
pairs with ``a.mp4`` or ``a.mkv`` in RECON_DIR); every real video needs a
reconstruction, extra reconstructions are listed and ignored. Both videos of a
pair are decoded with PyAV (:func:`harness.data.decode.decode_frames`) with the
same ``start``/``stride``/``frames``/``resolution`` and cut to the shorter one.

Identical folders give FVD 0 and PSNR at its cap of
:data:`metrics.quality.PSNR_CAP_DB` = 100 dB (identical frames have infinite
PSNR; the cap follows common_metrics_on_video_quality).

Usage::

    python -m harness compare REAL_DIR RECON_DIR --metrics fvd_16f,psnr,ssim,lpips \\
        [--resolution 128] [--frames 16] [--start 0] [--stride 1] [--out results.json]
    python -m harness compare REAL_DIR RECON_DIR --metrics psnr,tlp,tof,warp_error,tdiff,psnr_jump,tdiff_jump \
        --boundaries 16,32,48       # temporal fidelity; the jumps at the reconstructions' clip starts

The result also holds the per-frame values of the per-frame metrics (PSNR,
SSIM, LPIPS) under ``per_frame``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from harness.data.decode import decode_frames, to_model_range
from harness_core.errors import HarnessError, run_command
from harness_core.io import write_json_atomic
from harness_core.registry import METRICS
from harness.scoring import Scorer

#: file suffixes treated as videos
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".gif", ".y4m", ".ogv", ".flv", ".wmv"}
DEFAULT_METRICS = ("fvd_16f", "psnr", "ssim", "lpips")


class CompareError(HarnessError, ValueError):
    """The two folders cannot be compared (missing pairs, shapes that differ...); the message says why."""


def _videos(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise CompareError(f"{folder} is not a folder of videos")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            if path.stem in found:
                raise CompareError(f"{folder}: two videos named {path.stem!r} ({found[path.stem].name}, {path.name})")
            found[path.stem] = path
    if not found:
        raise CompareError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {folder}")
    return found


def match_videos(real_dir: str | Path, recon_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pairs ``(name, real path, recon path)`` sorted by name, and the names of unmatched reconstructions.

    Raises:
        CompareError: a folder without videos, or real videos without a reconstruction.
    """
    real, recon = _videos(Path(real_dir)), _videos(Path(recon_dir))
    missing = sorted(set(real) - set(recon))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise CompareError(f"{len(missing)} real videos have no reconstruction of the same name in {recon_dir}: {shown}")
    return [(name, real[name], recon[name]) for name in sorted(real)], sorted(set(recon) - set(real))


def _decode_pair(real: Path, recon: Path, start: int, frames: int | None, stride: int,
                 resolution: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    a = decode_frames(real, start=start, num_frames=frames, stride=stride, resolution=resolution)
    b = decode_frames(recon, start=start, num_frames=frames, stride=stride, resolution=resolution)
    if a.shape[1:] != b.shape[1:]:
        raise CompareError(f"{real.name} is {a.shape[2]}x{a.shape[1]} but its reconstruction {recon.name} is "
                           f"{b.shape[2]}x{b.shape[1]}: pass --resolution to resize both")
    t = min(len(a), len(b))
    return to_model_range(a[:t])[None], to_model_range(b[:t])[None]


def run_compare(real_dir: str | Path, recon_dir: str | Path, metrics: Sequence[str] | str = DEFAULT_METRICS,
                resolution: int | None = None, frames: int | None = None, start: int = 0, stride: int = 1,
                out: str | Path | None = None, metric_kwargs: dict[str, dict[str, Any]] | None = None,
                device: str | torch.device | None = None, show: bool = True,
                boundaries: Sequence[int] | None = None) -> dict[str, Any]:
    """Score the reconstructions in ``recon_dir`` against the videos of ``real_dir``.

    Args:
        real_dir, recon_dir: folders of videos, matched by file name without extension.
        metrics: registered metric names (list or comma-separated), e.g. ``fvd_16f,psnr,ssim,lpips``.
        resolution: square size both videos are resized (shorter side) and centre-cropped to;
            ``None`` keeps the decoded size (the two must then match).
        frames: frames per video from ``start`` with ``stride``; ``None`` for all (cut to the shorter
            video of the pair). ``fvd_16f`` needs at least 16.
        out: JSON file to write (atomically), or ``None``.
        metric_kwargs: per-metric constructor arguments, e.g. ``{"lpips": {"net": "vgg"}}``.
        device: where the metrics run (default: CUDA when available).
        show: print the per-video and summary tables.
        boundaries: frames where the reconstructions' clips / chunks / tiles start (after the first), for the
            boundary-jump metrics (``psnr_jump``, ``tdiff_jump``); none by default.

    Returns:
        ``{"real_dir", "recon_dir", "num_videos", "metrics": {name: value, name_n: ...},
        "per_video": [{"video", "frames", <per-video metric>: value}], "per_frame": [{"video", "frame",
        <per-frame metric>: value}], "protocol": {"compare": {...},
        <metric>: {...}}, "unmatched_reconstructions": [...]}``.

    Raises:
        CompareError: unmatched videos, mismatched frame sizes, unknown metric names.
        VideoDecodeError: an unreadable video or too few frames.
        NonFiniteError: a NaN or infinite metric value (nothing is written).
    """
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise CompareError("no metrics given")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise CompareError(f"unknown metrics {unknown}; registered: {', '.join(METRICS.names())}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pairs, unmatched = match_videos(real_dir, recon_dir)
    scorer = Scorer(names, device, metric_kwargs, label=f"compare {recon_dir}", boundaries=boundaries)
    for name, real_path, recon_path in pairs:
        real, recon = _decode_pair(real_path, recon_path, start, frames, stride, resolution)
        scorer.update(real.to(device), recon.to(device), [{"video": name, "frames": int(real.shape[2])}])
    rows = scorer.rows

    summary, metric_protocols = scorer.compute()
    protocol: dict[str, Any] = {"compare": {
        "real_dir": str(Path(real_dir).resolve()), "recon_dir": str(Path(recon_dir).resolve()),
        "matching": "file name without extension", "decode": "PyAV, every frame in order (harness.data.decode)",
        "resolution": resolution or "decoded size", "frames": frames or "all (cut to the shorter video of a pair)",
        "start": start, "stride": stride, "boundaries": list(boundaries or []),
    }, **metric_protocols}
    result = {
        "real_dir": str(real_dir), "recon_dir": str(recon_dir), "num_videos": len(pairs), "metrics": summary,
        "per_video": rows, "per_frame": scorer.frame_rows, "protocol": protocol, "unmatched_reconstructions": unmatched,
    }
    if out is not None:
        write_json_atomic(Path(out), result)
    if show:
        print(format_tables(result))
    return result


def format_tables(result: dict[str, Any]) -> str:
    """The per-video table and the summary table of a :func:`run_compare` result (tabulate)."""
    from tabulate import tabulate

    per_video = tabulate(result["per_video"], headers="keys", floatfmt=".4f")
    lines = [per_video, ""]
    summary_rows = []
    for key, value in result["metrics"].items():
        note = ""
        proto = result["protocol"].get(key)
        if isinstance(proto, dict) and "min_comparable_n" in proto:
            n = result["metrics"].get(f"{key}_n", 0)
            note = f"N={n}" + (" (not comparable: N < %d)" % proto["min_comparable_n"] if n < proto["min_comparable_n"] else "")
        summary_rows.append((key, value, note))
    lines.append(tabulate(summary_rows, headers=["metric", "value", "note"], floatfmt=".4f"))
    if result["unmatched_reconstructions"]:
        lines.append(f"\nignored {len(result['unmatched_reconstructions'])} reconstructions without a real video: "
                     + ", ".join(result["unmatched_reconstructions"][:10]))
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> int:
    run_compare(args.real_dir, args.recon_dir, metrics=args.metrics, resolution=args.resolution, frames=args.frames,
                start=args.start, stride=args.stride, out=args.out, device=args.device, boundaries=args.boundaries)
    if args.out:
        print(f"results: {args.out}")
    return 0


def _frame_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame numbers, got {text!r}") from None


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("real_dir", help="folder of real videos")
    parser.add_argument("recon_dir", help="folder of reconstructions with the same file names (extension may differ)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help=f"comma-separated registered metrics (default {','.join(DEFAULT_METRICS)})")
    parser.add_argument("--resolution", type=int, help="resize (shorter side) and centre-crop both videos to this square size")
    parser.add_argument("--frames", type=int, help="frames per video (default: all, cut to the shorter video of each pair)")
    parser.add_argument("--start", type=int, default=0, help="first decoded frame (default 0)")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame (default 1)")
    parser.add_argument("--out", help="write the results and the protocol as JSON here")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--boundaries", type=_frame_list, default=None,
                        help="comma-separated first frames of the reconstructions' chunks after the first "
                             "(e.g. 16,32,48), for psnr_jump and tdiff_jump")
    parser.set_defaults(func=_command)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``); it sets
    ``func`` so that ``args.func(args)`` runs it and returns an exit code."""
    return _configure(subparsers.add_parser("compare", help="metrics between two folders of videos matched by file name",
                                            description=__doc__.split("\n\n")[0]))


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m harness.compare REAL_DIR RECON_DIR ...`` (same options as ``python -m harness compare``); exit code
    2 with one ``error:`` line for an expected error, 1 with the traceback for any other
    (:func:`harness_core.errors.run_command`)."""
    parser = _configure(argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(None if argv is None else list(argv))
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
