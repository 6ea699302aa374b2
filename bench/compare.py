"""The ingest (or artifacts, or worker) benchmark on several revisions of the code, alternating.

    python -m bench.compare --rounds 2 a70c3c4 5a9d367 HEAD
    python -m bench.compare --bench artifacts --rounds 3 main HEAD
    python -m bench.compare --bench worker --rounds 3 main HEAD

Each revision is checked out into a temporary worktree, gets its stubs generated, and is
benchmarked with *this* checkout's `bench/` (so every revision is measured the same way); the
rounds alternate the revisions so a change in the machine's load touches them all alike. It
prints one line per revision: medians over the rounds, beside the same runs' baselines (bare
aiohttp; FileResponse; single-row UPDATE transactions). The worker benchmark runs shorter drains
than `make bench-worker` (4,000 one-step and 800 four-step runs). Figures go to
bench/results/compare-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import machine, print_machine, write_json

REPO = Path(__file__).resolve().parents[1]


def _checkout(revision: str, root: Path) -> Path:
    """A worktree of `revision` with its stubs and this checkout's benchmark code."""
    folder = root / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(folder), revision],
        check=True,
    )
    shutil.rmtree(folder / "bench", ignore_errors=True)
    shutil.copytree(REPO / "bench", folder / "bench", ignore=shutil.ignore_patterns("results"))
    subprocess.run([sys.executable, "-m", "aias.core.protogen"], cwd=folder, check=True)
    # The links `make` creates (git ignores them): without them `aias.services` and
    # `aias.gateway` resolve through the editable install to *this* checkout's code.
    for package in ("services", "gateway"):
        (folder / "aias" / package).symlink_to(Path("..") / package)
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aias.core, aias.services, aias.gateway as g; "
            "print(*(m.__path__[0] for m in (aias.core, aias.services, g)))",
        ],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not all(Path(path).resolve().is_relative_to(folder.resolve()) for path in where):
        raise RuntimeError(f"{revision}: the code imported is not the checkout's: {where}")
    return folder


def _run(folder: Path, bench: str, seconds: float, rates: list[str]) -> dict[str, Any]:
    output = folder / f"{bench}.json"
    if bench == "artifacts":
        # One round per run: the revisions take turns round by round, each beside its own
        # same-run FileResponse baselines.
        command = ["bench.artifacts_path", "--rounds", "1"]
    elif bench == "worker":
        # Drains long enough to measure, short enough to alternate a few rounds.
        command = [
            "bench.worker_throughput",
            *("--runs", "4000", "--four-step-runs", "800", "--webhooks", "200"),
            *("--sequential", "5"),
        ]
    else:
        command = ["bench.ingest", "--seconds", str(seconds), "--rates", *rates]
    subprocess.run(
        [sys.executable, "-m", *command, "--output", str(output)],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures: dict[str, Any] = json.loads(output.read_text())
    return figures


def _median(runs: list[dict[str, Any]], pick: Any) -> float:
    return round(float(statistics.median(pick(run) for run in runs)), 2)


def _artifacts_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    summary = {
        name: _median(runs, lambda r, n=name: r["mib_per_second"][n])
        for name in runs[0]["mib_per_second"]
    }
    for name in (
        "download_ratio",
        "download_ratio_no_sendfile",
        "upload_ratio",
        "upload_ratio_kept",
        "upload_cpu_ms_artifacts",
        "upload_minor_faults_artifacts",
    ):
        summary[name] = _median(runs, lambda r, n=name: r[n])
    for kind in ("gateway", "artifacts"):
        summary[f"download_cpu_ms_{kind}"] = _median(
            runs, lambda r, k=kind: r["download_cpu_ms"][k]
        )
    return summary


def _worker_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    summary = {}
    for workers in ("workers_1", "workers_2"):
        for name in ("one_step_per_second", "three_step_per_second", "four_step_per_second"):
            summary[f"{workers}_{name}"] = _median(
                runs, lambda r, w=workers, n=name: r["results"][w][n]
            )
        for process in runs[0]["results"][workers]["four_step_cpu_ms_per_run"]:
            summary[f"{workers}_four_step_cpu_ms_{process}"] = _median(
                runs,
                lambda r, w=workers, p=process: r["results"][w]["four_step_cpu_ms_per_run"].get(
                    p, 0.0
                ),
            )
    summary["baseline_update_transactions_per_second"] = _median(
        runs, lambda r: r["results"]["baseline"]["durable_update_transactions_per_second"]
    )
    return summary


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    if "download_ratio" in runs[0]:
        return _artifacts_summary(runs)
    if "results" in runs[0]:
        return _worker_summary(runs)

    def median(pick: Any) -> float:
        return _median(runs, pick)

    summary = {
        "bare_c64_per_second": median(lambda r: r["bare_aiohttp_202_c64"]["per_second"]),
        "c64_per_second": median(lambda r: r["webhook_c64"]["per_second"]),
        "c64_p99_ms": median(lambda r: r["webhook_c64"]["p99_ms"]),
        "c16_per_second": median(lambda r: r["webhook_c16"]["per_second"]),
        "cpu_ms_per_webhook": median(
            lambda r: sum(r["webhook_c64"]["cpu_ms_per_webhook"].values())
        ),
    }
    # Where the CPU went, process by process: a change can move work (a worker that keeps up
    # with ingest uses more of it inside the measured window) without changing the total.
    for process in runs[0]["webhook_c64"]["cpu_ms_per_webhook"]:
        summary[f"cpu_ms_per_webhook_{process}"] = median(
            lambda r, p=process: r["webhook_c64"]["cpu_ms_per_webhook"].get(p, 0.0)
        )
    for name in runs[0]:
        if name.startswith("webhook_openloop_"):
            summary[f"{name}_p99_ms"] = median(lambda r, n=name: r[n]["p99_ms"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--bench", choices=("ingest", "artifacts", "worker"), default="ingest")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rates", nargs="*", default=["150", "500"])
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    root = Path(tempfile.mkdtemp(prefix="aias-compare-"))
    results: dict[str, list[dict[str, Any]]] = {revision: [] for revision in args.revisions}
    try:
        folders = {revision: _checkout(revision, root) for revision in args.revisions}
        order = list(folders.items())
        for round_number in range(args.rounds):
            # Who goes first changes every round: a run shares the CPU with what the one
            # before it left running.
            for revision, folder in order if round_number % 2 == 0 else reversed(order):
                print(f"round {round_number + 1}: {revision}", flush=True)
                results[revision].append(_run(folder, args.bench, args.seconds, args.rates))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
        for folder in root.iterdir():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
    summaries = {revision: _summary(runs) for revision, runs in results.items()}
    for revision, summary in summaries.items():
        print(f"{revision}: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()))
    write_json(
        "compare" if args.bench == "ingest" else f"compare-{args.bench}",
        {"rounds": args.rounds, "seconds": args.seconds, "revisions": summaries},
    )


if __name__ == "__main__":
    main()
