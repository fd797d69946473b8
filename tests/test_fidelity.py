"""``docs/fidelity.md``: the conformance tables against the papers and the official code (issue 24, item 1).

Checks the form of every table row (paper, official code with repository and commit, project, verdict with a
reason and a restoring key for each deviation) and that every protocol key of ``suites/ucf101_128f.yaml`` is
named in the document, with the naming convention the document states in "Naming suite keys":

* dotted paths (``data.frames``), a list of plain values being one key (``train.betas``);
* tokenizer entries as ``tokenizers[<id>].<path>``; a constructor kwarg may also be named
  ``<registered name>.<kwarg>`` (``coordtok.stage1_steps``), which covers that kwarg of every entry of the name;
* a key is named by a backticked span equal to it or starting with it and a space, ``=`` or ``:``;
* every metric listed in ``evaluate.metrics`` and ``generation.fvd_protocols`` is named as itself.

Keys that change no number are listed in :data:`NON_PROTOCOL` with their reason. A key added to the suite
later fails :func:`test_every_protocol_key_is_named` until a row (or :data:`NON_PROTOCOL`) names it.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fidelity.md"
SUITE = ROOT / "suites" / "ucf101_128f.yaml"

#: columns of every conformance table
HEADER = ["choice", "paper", "official code", "project", "verdict"]
#: columns of the table of official repositories and their commits
SOURCES_HEADER = ["repository", "commit", "what was read"]
#: heading of the document's list of non-protocol keys
NON_PROTOCOL_HEADING = "Suite keys that are not protocol"
#: suite lists whose values are metric names, each of which must be named
METRIC_LISTS = ("evaluate.metrics", "generation.fvd_protocols")
#: sections that must hold a conformance table, besides one per registered tokenizer name of the suite
REQUIRED_SECTIONS = ("Data protocol", "Reconstruction evaluation protocol", "`sit`", "`ar`")

#: keys of the paper suite that change no number, with the reason (``tokenizers[<id>]`` stands for any entry)
NON_PROTOCOL: dict[str, str] = {
    "name": "label of the suite",
    "description": "label of the suite",
    "seed": "the root of every seeded draw (harness_core/seeding.py); a draw, not a protocol choice",
    "data.root": "where the dataset is on disk",
    "data.memory_cache": "how frames reach the model; the clips are byte-identical (docs/datasets.md 'Same clips')",
    "data.store": "how frames reach the model; the clips are byte-identical (docs/datasets.md 'Same clips')",
    "data.num_workers": "how frames reach the model; the clips are byte-identical (docs/datasets.md 'Same clips')",
    "train.checkpoint_every": "checkpoint interval; a resumed run reproduces the uninterrupted one (harness/fit.py)",
    "train.log_every": "logging interval",
    "evaluate.batch_size": "videos per model call; every metric is per video or a sum of per-clip statistics",
    "evaluate.chunk_batch": "chunks per model call; every metric is per video or a sum of per-chunk statistics",
    "evaluate.keep_reconstructions": "whether reconstructions are kept on disk",
    "generation.sample_batch_size": "videos per sampling batch: the draws change, their distribution does not",
    "generation.num_gif_samples": "GIFs written for inspection",
    "generation.checkpoint_every": "checkpoint interval",
    "generation.log_every": "logging interval",
    "tokenizers[<id>].id": "the entry's identity",
    "tokenizers[<id>].name": "the entry's family; the document has one table per registered name",
}

_OFFICIAL = re.compile(r"`([\w.-]+/[\w.-]+)@([0-9a-f]{7,40})`")
_SPAN = re.compile(r"`([^`\n]+)`")
_ENTRY = re.compile(r"^tokenizers\[([^\]]+)\]\.kwargs\.(.+)$")


# --------------------------------------------------------------------------------------------- parsing


def markdown_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table of ``text`` as ``(heading above it, header cells, rows of cells)``; cells stripped."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    heading, block = "", []

    def flush() -> None:
        if len(block) >= 2:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
            tables.append((heading, cells[0], cells[2:]))
        block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
    flush()
    return tables


def conformance_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    return [(heading, rows) for heading, header, rows in markdown_tables(text) if header == HEADER]


def sources(text: str) -> dict[str, str]:
    """``{repository: short commit}`` of the document's sources table."""
    for _, header, rows in markdown_tables(text):
        if header == SOURCES_HEADER:
            return {row[0].strip("`"): row[1].strip("`") for row in rows}
    raise AssertionError(f"{DOC.name}: no sources table with the columns {SOURCES_HEADER}")


def named_spans(text: str) -> set[str]:
    return set(_SPAN.findall(text))


def names(span: str, key: str) -> bool:
    """Whether a backticked ``span`` names ``key``: equal, or ``key`` followed by a space, ``=`` or ``:``."""
    return span == key or (span.startswith(key) and span[len(key)] in " =:")


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted leaf keys of a suite; a list of mappings with ``id`` is addressed as ``prefix[<id>]``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and node and all(isinstance(item, dict) and "id" in item for item in node):
        for item in node:
            for key, value in item.items():
                yield from flatten(value, f"{prefix}[{item['id']}].{key}")
    else:
        yield prefix, node


def generic(key: str) -> str:
    """``tokenizers[magvit_ae_l].name`` -> ``tokenizers[<id>].name`` (the form of :data:`NON_PROTOCOL`)."""
    return re.sub(r"\[[^\]]+\]", "[<id>]", key)


def aliases(key: str, entry_names: dict[str, str]) -> list[str]:
    """The spellings that name ``key``: itself and, for a kwarg of an entry, ``<registered name>.<kwarg>``."""
    match = _ENTRY.match(key)
    return [key, f"{entry_names[match.group(1)]}.{match.group(2)}"] if match else [key]


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def suite() -> dict:
    return yaml.safe_load(SUITE.read_text())


# --------------------------------------------------------------------------------------------- rows


def test_tables_cover_every_family(doc: str, suite: dict) -> None:
    """A conformance table under the data and evaluation protocol, each generator and each tokenizer name."""
    headings = [heading for heading, rows in conformance_tables(doc) if rows]
    required = list(REQUIRED_SECTIONS) + sorted({f"`{entry['name']}`" for entry in suite["tokenizers"]})
    missing = [part for part in required if not any(part in heading for heading in headings)]
    assert not missing, f"{DOC.name}: no conformance table under a heading containing {missing}"


def test_every_row_has_five_filled_cells(doc: str) -> None:
    bad = [f"{heading}: {row[:1]}" for heading, rows in conformance_tables(doc) for row in rows
           if len(row) != len(HEADER) or not all(cell for cell in row)]
    assert not bad, f"{DOC.name}: rows with a missing or empty cell (or a '|' inside a cell): {bad}"


def test_official_cells_name_a_listed_repository_and_its_commit(doc: str) -> None:
    """Every official cell names ``owner/name@commit``, and that commit is the one of the sources table."""
    listed = sources(doc)
    problems = []
    for heading, rows in conformance_tables(doc):
        for row in rows:
            cited = _OFFICIAL.findall(row[2])
            if not cited:
                problems.append(f"{heading} / {row[0]}: no `owner/name@commit`")
            problems += [f"{heading} / {row[0]}: {repo}@{commit} (sources: {listed.get(repo)})"
                         for repo, commit in cited if listed.get(repo) != commit]
    assert not problems, f"{DOC.name}: official cells without a listed repository and commit: {problems}"


def test_verdicts_are_equal_or_a_reasoned_deviation_with_its_restoring_key(doc: str) -> None:
    problems = []
    for heading, rows in conformance_tables(doc):
        for row in rows:
            verdict = row[4]
            if verdict.startswith("equal"):
                continue
            reason = verdict.removeprefix("deviation:").split("restore:")[0].strip()
            if not verdict.startswith("deviation:") or len(reason) < 15 or "restore:" not in verdict:
                problems.append(f"{heading} / {row[0]}: {verdict[:60]!r}")
    assert not problems, (f"{DOC.name}: verdicts must be 'equal...' or 'deviation: <reason>. restore: <key or none (why)>': "
                          f"{problems}")


# --------------------------------------------------------------------------------------------- keys


def test_every_protocol_key_is_named(doc: str, suite: dict) -> None:
    spans = named_spans(doc)
    entry_names = {entry["id"]: entry["name"] for entry in suite["tokenizers"]}
    missing = [key for key, _ in flatten(suite) if generic(key) not in NON_PROTOCOL
               and not any(names(span, alias) for alias in aliases(key, entry_names) for span in spans)]
    assert not missing, (f"protocol keys of {SUITE.name} named nowhere in {DOC.name} (add a row naming them, or list "
                         f"them in NON_PROTOCOL with the reason): {missing}")


def test_every_listed_metric_is_named(doc: str, suite: dict) -> None:
    spans = named_spans(doc)
    leaves = dict(flatten(suite))
    missing = [f"{key}: {name}" for key in METRIC_LISTS for name in leaves.get(key) or [] if name not in spans]
    assert not missing, f"metrics of {SUITE.name} named nowhere in {DOC.name}: {missing}"


def test_non_protocol_keys_exist_and_match_the_document(doc: str, suite: dict) -> None:
    """Every :data:`NON_PROTOCOL` key is a key of the suite, and the document's list holds exactly these keys."""
    present = {generic(key) for key, _ in flatten(suite)}
    stale = sorted(set(NON_PROTOCOL) - present)
    assert not stale, f"NON_PROTOCOL names keys that {SUITE.name} no longer has: {stale}"
    listed = [rows for heading, header, rows in markdown_tables(doc) if heading == NON_PROTOCOL_HEADING]
    assert listed, f"{DOC.name}: no table under the heading {NON_PROTOCOL_HEADING!r}"
    documented = {span for row in listed[0] for span in _SPAN.findall(row[0])}
    assert documented == set(NON_PROTOCOL), (f"{DOC.name} '{NON_PROTOCOL_HEADING}' and NON_PROTOCOL differ: only in the "
                                             f"document {sorted(documented - set(NON_PROTOCOL))}, only in the test "
                                             f"{sorted(set(NON_PROTOCOL) - documented)}")
