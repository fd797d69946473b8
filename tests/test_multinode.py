"""Two nodes on the loopback address (issue 25, item 10): the node-local parts of a run (the clip store built on
each node's local main process, the cache folder with its real FVD statistics) work when every node has its own
cache folder, and a whole small suite gives the one-process values.

The suite is tests/test_reproducibility.py's (real sample videos, a tiny grid3d tokenizer, PSNR / SSIM / LPIPS /
rFVD with real LPIPS and I3D weights, a tiny SiT generator and gFVD) with the clip store on and no cache folder in
the suite: each process's cache is ``$HARNESS_CACHE`` (:func:`harness_core.io.cache_root`), so the suite file is
the same on both nodes and only the environment says where a node keeps its local files. The one-process run
trains; the two-node run reuses its checkpoints (DDP training differs from one process in float rounding,
test_reproducibility.DDP_RTOL) and shards reconstruction, evaluation and gFVD sampling over the two nodes.

Node 0 starts with the one-process run's real rFVD statistics in its cache and node 1 without: a node that ran the
suite before. Both must then compute the real statistics (a collective reduction counts each real clip once only
when every process feeds its share), and each node's cache gets the file.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import REPO, free_port
from test_reproducibility import ENV, SHARDED_RTOL, TOKENIZER, harness, values, write_suite

pytestmark = pytest.mark.slow

#: seconds a run may take before the test fails; a hang (a node waiting at a barrier or in a collective for another
#: that died or took another path) fails instead of blocking CI
RUN_TIMEOUT = 300
NODES = 2


def write_node_suite(folder: Path) -> Path:
    """test_reproducibility's suite, writing into ``folder/results``, with the clip store on and every cache folder
    left to ``$HARNESS_CACHE`` (no ``data.cache_dir``, gFVD real statistics in the results folder's default)."""
    path = write_suite(folder)
    suite = yaml.safe_load(path.read_text())
    del suite["data"]["cache_dir"], suite["generation"]["real_cache_dir"]
    suite["data"]["store"] = "on"
    path.write_text(yaml.safe_dump(suite))
    return path


def node_command(suite: Path, rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc_per_node=1",
            f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", *harness("run", str(suite), "-q")[1:]]


def stop(process: subprocess.Popen) -> None:
    """Kill ``process`` and its descendants (torchrun starts each worker in a session of its own), by their ids."""
    if process.poll() is not None:
        return
    workers = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()  # reaped here, so that its exit code is the kill's
    for worker in workers:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(workers, timeout=30)


def run_nodes(suite: Path, caches: list[Path], logs: Path) -> list[int]:
    """Start every node's torchrun at once (node ``r`` with ``HARNESS_CACHE=caches[r]``), wait for all, and return
    their exit codes; when a node fails or the time runs out, every node still running is stopped."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        for rank, cache in enumerate(caches):
            with open(logs / f"node{rank}.log", "w") as log:
                processes.append(subprocess.Popen(node_command(suite, rank, port), cwd=REPO, stdout=log,
                                                  stderr=subprocess.STDOUT, env={**ENV, "HARNESS_CACHE": str(cache)}))
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            if None not in codes or any(codes):  # all ended, or one died (the others would wait for it at a barrier)
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            stop(process)
    return [p.returncode for p in processes]


def store_entries(cache: Path) -> dict[str, dict]:
    """The manifest entries of the one clip store under ``cache`` whose entry files all exist."""
    manifests = list(cache.glob("clip_store/*/manifest.json"))
    assert len(manifests) == 1, manifests
    entries = json.loads(manifests[0].read_text())["entries"]
    for name, entry in entries.items():
        assert (manifests[0].parent / name).stat().st_size == entry["bytes"], name
    return entries


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("one_process")
    cache = folder / "cache"
    result = subprocess.run(harness("run", str(write_node_suite(folder)), "-q"), capture_output=True, text=True,
                            cwd=REPO, env={**ENV, "HARNESS_CACHE": str(cache)}, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"run_dir": folder / "results" / TOKENIZER, "cache": cache}


def test_two_nodes_with_own_caches_give_the_one_process_values(one_process, tmp_path):
    source, target = one_process["run_dir"], tmp_path / "results" / TOKENIZER
    (target / "generation").mkdir(parents=True)
    for name in ("config.json", "checkpoint.pt", "train.json", "generation/checkpoint.pt"):
        shutil.copy2(source / name, target / name)
    caches = [tmp_path / f"node{rank}_cache" for rank in range(NODES)]
    shutil.copytree(one_process["cache"] / "fvd", caches[0] / "fvd")  # node 0 ran this suite before; node 1 did not
    seeded = sorted(p.name for p in (caches[0] / "fvd").iterdir())
    assert seeded, "the one-process run cached no real rFVD statistics"

    codes = run_nodes(write_node_suite(tmp_path), caches, tmp_path / "logs")
    if codes != [0] * NODES:
        tails = "\n".join(f"--- node {r} (exit {c})\n{(tmp_path / 'logs' / f'node{r}.log').read_text()[-3000:]}"
                          for r, c in enumerate(codes))
        pytest.fail(f"exit codes {codes}:\n{tails}")

    reference = store_entries(one_process["cache"])
    for cache in caches:  # each node built its own complete store: the same entries as the one-process store
        assert {name: e["crc32"] for name, e in store_entries(cache).items()} == {name: e["crc32"] for name, e in reference.items()}
        assert sorted(p.name for p in (cache / "fvd").iterdir()) == seeded  # each node's main process cached them

    two, one = values(target), values(source)
    assert two["per_video"]["clip"] == one["per_video"]["clip"]
    for table in ("metrics", "generation"):
        assert set(two[table]) == set(one[table])
        for key, value in one[table].items():
            assert two[table][key] == pytest.approx(value, rel=SHARDED_RTOL, abs=0), (table, key)
    for column, value in one["per_video"].items():
        if column not in ("clip", "video"):
            assert two["per_video"][column] == pytest.approx(value, rel=SHARDED_RTOL, abs=0), column
    assert {"fvd_16f", "psnr", "ssim", "lpips"} <= set(one["metrics"]) and "gfvd_16f" in one["generation"]

    for path in (tmp_path / "results").rglob("*"):  # nothing node-local is recorded in the shared results
        if path.suffix in (".json", ".csv", ".md", ".html", ".txt"):
            assert not any(str(cache) in path.read_text() for cache in caches), path
    for record in (target / "metrics.json", target / "generation" / "metrics.json"):
        shards = json.loads(record.read_text())["shards"]
        assert shards["world_size"] == NODES and [r["rank"] for r in shards["ranks"]] == [0, 1], record
        assert all(r["items"] for r in shards["ranks"]), record  # both nodes did a share
