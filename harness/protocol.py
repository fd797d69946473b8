"""The protocol card of a suite: what it will measure and how it will train, read before anything runs.

``python -m harness protocol SUITE [--set key=value ...]`` prints it without
reading any video (the data folder need not exist): the dataset and its split
rule, the clip geometry and resize, the short-video rule, the evaluation-clip
list (size and how it is drawn), every metric with its settings (each metric's
own ``protocol()``), the rate definition (bits per pixel of each kind and the
BD-rate, :mod:`metrics.rate`), the generation protocol and every tokenizer's training
recipe with its source. A user compares it with the paper (for the paper
suite: CoordTok supplementary B.1 and B.2) before spending GPU time; the
conformance of each choice to the official code is in ``docs/fidelity.md``.
"""
from __future__ import annotations

import textwrap
from typing import Any

from harness.config import Suite
from harness.config.schema import generation_config

#: width of the card (characters) and the widest label kept beside its text
WIDTH = 110
LABEL_WIDTH = 20


def _settings(values: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    items = values.items() if keys is None else ((k, values[k]) for k in keys if k in values)
    return ", ".join(f"{k} {v}" for k, v in items)


def data_lines(suite: Suite) -> list[tuple[str, str]]:
    """``(label, text)`` lines of the data protocol."""
    from harness.data.decode import RESIZE_METHODS
    from harness_core.registry import DATASETS

    data = suite.data
    dataset = DATASETS.get(data.dataset)
    lines = [("dataset", f"{data.dataset}" + (f", fold {data.fold}" if data.dataset == "ucf101" else "")
              + f": {getattr(dataset, 'split_rule', 'not stated').format(fold=data.fold)}"),
             ("clips", f"{data.frames} frames at stride {data.frame_stride}, {data.resolution}x{data.resolution}; "
                       f"resize {data.resize}: {RESIZE_METHODS[data.resize]}"),
             ("short videos", "pad: a clip running past its video's end holds its real frames, padded with the last one; "
                              "n_frames goes to tokenizers that take it and scores use real frames only"
              if data.short_videos == "pad" else "drop: videos shorter than one clip are not used")]
    if data.eval_list:
        rule = f"the given list {data.eval_list} (lines 'relpath start end'), used as is"
    elif data.eval_clips:
        rule = (f"{data.eval_clips} clips drawn from the suite seed: a video uniformly with replacement from the "
                f"evaluation videos" + (f" (a seeded subset of {data.max_eval_videos})" if data.max_eval_videos else "")
                + ", then a start uniformly inside it")
    else:
        rule = (f"{data.eval_clips_per_video} non-overlapping clip(s) per evaluation video at seeded positions"
                + (f", {data.max_eval_videos} videos drawn from the seed" if data.max_eval_videos else ""))
    lines.append(("evaluation clips", rule + "; written to <results>/eval_list.txt"))
    lines.append(("training clips", "a video uniformly, then a start uniformly inside it: a pure function of "
                                    "(suite seed, sample index), the same for every tokenizer"))
    return lines


#: the settings of a set metric (FVD) a card shows, in this order; other dict-valued protocols show every key
_SET_METRIC_KEYS = ("clip", "valid_frames", "skipped_videos", "feature", "preprocessing", "covariance", "groups", "source",
                    "weights_sha256")


def metric_settings_text(value: Any) -> str:
    """One line of a metric's recorded settings (its ``protocol()`` value): text as it is; a dict as ``key value``
    pairs (for FVD-like protocols the keys of :data:`_SET_METRIC_KEYS`, sha256 values shortened to 16 digits)."""
    if not isinstance(value, dict):
        return str(value)
    keys = _SET_METRIC_KEYS if "clip" in value else tuple(value)
    shown = {k: (str(value[k])[:16] if k.endswith("sha256") and value[k] else value[k]) for k in keys if k in value}
    return _settings({k: v for k, v in shown.items() if v not in (None, "", {}, [])})


def metric_lines(suite: Suite) -> list[tuple[str, str]]:
    """One ``(metric, settings)`` line per metric of ``evaluate.metrics``, from each metric's ``protocol()``."""
    from harness_core.registry import METRICS

    lines = []
    for reference in suite.evaluate.metrics:
        metric = METRICS.create(reference, **suite.evaluate.metric_kwargs.get(reference, {}))
        protocol = metric.protocol() or {metric.name: metric.title or metric.name}
        lines.extend((key, metric_settings_text(value)) for key, value in protocol.items())
    return lines


def rate_lines() -> list[tuple[str, str]]:
    """The rate's definition (:class:`metrics.rate.BitsPerPixel`): the formula, each kind, comparability, BD-rate."""
    from metrics.rate import MIN_BD_POINTS, RATE_KINDS, BitsPerPixel

    return [("bpp", "bits per video / (frames x height x width); bits counted over every chunk of the video and, for "
                    "a flexible tokenizer, at the row's token budget"),
            *((kind, text) for kind, text in RATE_KINDS.items()),
            ("which kind", "a tokenizer that reports its exact bits (Tokens.bits: the codecs) gets bitstream; one with "
                           "discrete indices gets nominal, with entropy beside it; continuous latents get uncompressed fp16"),
            ("comparability", BitsPerPixel.comparability),
            ("BD-rate", f"against the h265 rows, per quality metric: PCHIP interpolation of log10(bpp) over quality on "
                        f"the common quality range (VCEG-M33/AM91; JCTVC-L1100, JVET-T2010 sheets); {MIN_BD_POINTS}+ "
                        f"points per curve, n/a without overlap")]


#: generation keys shown on the card: always, for SiT (continuous tokens), and for the epochs / pool data modes
_GENERATION_KEYS = ("generator", "model", "steps", "batch_size", "lr", "betas", "weight_decay", "ema", "train_data",
                    "num_samples", "num_real", "real_clips", "fvd_protocols", "conditional")
_SIT_KEYS = ("patch", "num_norm_clips", "sampler", "sampling_steps", "last_step_size")


def generation_lines(suite: Suite) -> list[tuple[str, str]]:
    """The generation protocol of each distinct enabled generation setting, with the entries it applies to."""
    seen: dict[str, list[str]] = {}
    for entry in suite.tokenizers:
        cfg = generation_config(suite, entry)
        if cfg is None or not cfg.enabled:
            continue
        values = cfg.model_dump()
        keys = _GENERATION_KEYS + (() if cfg.generator == "ar" else _SIT_KEYS)
        keys += ("num_train_clips",) if cfg.train_data == "pool" else ()
        seen.setdefault(_settings(values, keys), []).append(entry.id)
    return [(", ".join(ids), text) for text, ids in seen.items()]


def tokenizer_lines(suite: Suite) -> list[tuple[str, str]]:
    """Each tokenizer's family, kwargs, training recipe and its source (the family's ``recipe_source``)."""
    from harness_core.registry import TOKENIZERS

    lines = []
    for entry in suite.tokenizers:
        cls = TOKENIZERS.get(entry.name)
        kwargs = ", ".join(f"{k}={v}" for k, v in entry.kwargs.items())
        if _is_codec(cls):  # cheap to build: its settings as its rows will record them
            recipe = "classical codec, evaluation only: " + metric_settings_text(cls(**entry.kwargs).protocol(suite.data.frames))
        elif entry.pretrained:
            recipe = "evaluation only (pretrained weights)"
        else:
            train = suite.train_config(entry).model_dump()
            recipe = "train: " + _settings(train, ("steps", "batch_size", "lr", "betas", "weight_decay", "mixed_precision",
                                                   "tf32", "grad_clip"))
        source = getattr(cls, "recipe_source", "") or "not stated"
        lines.append((entry.id, f"{entry.name}({kwargs}); {recipe}; source: {source}"))
    return lines


def _is_codec(cls: type) -> bool:
    """Whether a registered tokenizer class is a classical codec (:mod:`video_tokenizers.codecs`, issue 27)."""
    from video_tokenizers.codecs import CodecTokenizer

    return isinstance(cls, type) and issubclass(cls, CodecTokenizer)


def protocol_card(suite: Suite, source: str = "") -> str:
    """The suite's protocol card as plain text (see the module docstring)."""
    sections = [("data", data_lines(suite)), ("evaluation metrics (per clip, then the mean over clips; set metrics "
                                                 "over all clips)", metric_lines(suite))]
    sections.append(("rate (bits per pixel, the bpp column and the rate-distortion plot)", rate_lines()))
    generation = generation_lines(suite)
    if generation:
        sections.append(("generation (gFVD)", generation))
    sections.append(("tokenizers", tokenizer_lines(suite)))
    out = [f"protocol of suite {suite.name}" + (f" ({source})" if source else ""),
           f"  {suite.description}" if suite.description else "",
           f"  seed {suite.seed}; deterministic {suite.deterministic}; conformance to the papers' official code: "
           f"docs/fidelity.md"]
    for title, lines in sections:
        out.append(f"\n{title}")
        label_width = min(LABEL_WIDTH, max(len(label) for label, _ in lines))
        for label, text in lines:
            wrapped = textwrap.wrap(text, WIDTH - label_width - 4) or [""]
            if len(label) > label_width:  # a long label (several tokenizer ids) gets a line of its own
                out.append(f"  {label}")
                out.extend(f"  {'':<{label_width}}  {line}" for line in wrapped)
                continue
            out.append(f"  {label:<{label_width}}  {wrapped[0]}")
            out.extend(f"  {'':<{label_width}}  {line}" for line in wrapped[1:])
    return "\n".join(line for line in out if line != "") + "\n"
