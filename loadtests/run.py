"""Headless load test: start the server on the embedded model (loopback only), run locust against
it for a fixed time with a fixed number of users, stop, write locust's CSV files and print a summary.

    python -m loadtests.run                    # make loadtest: 4 users, 60 s
    python -m loadtests.run --profile soak     # make soak: 4 users, 20 min, fails if memory keeps growing
    python -m loadtests.run -u 2 -t 15s StreamingChatUser NonStreamingChatUser

Exit status: 0 when every request succeeded (and, for the soak, resident memory stopped growing).
To load a deployed Space instead, run locust itself with the same locustfile (see the README).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from spaceserve.settings import ROOT_DIR as REPO

from .serve import LocalServer

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PROFILES: dict[str, dict[str, Any]] = {
    "default": {"users": 4, "spawn_rate": 2.0, "time": "60s", "check_memory": False},
    "soak": {"users": 4, "spawn_rate": 1.0, "time": "20m", "check_memory": True},
}
SERVER_ENV = {"PARALLEL_SLOTS": "4", "CONTEXT_SIZE": "2048", "MAX_QUEUE": "32"}


def seconds(text: str) -> int:
    """Locust's time format: ``90``, ``60s``, ``20m``, ``1h30m``."""
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 60s, 20m, 1h30m)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


# -- memory ---------------------------------------------------------------------------------


@dataclass
class MemorySampler:
    """The server's resident memory every ``interval`` seconds, in a background thread."""

    pid: int
    interval: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._process = psutil.Process(self.pid)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                rss = self._process.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.samples.append((time.monotonic() - self._started, rss))
            if self._stop.wait(self.interval):
                return

    def growth_per_minute(self) -> float | None:
        """Least-squares slope over the second half (the first half is warm-up: caches filling)."""
        half = self.samples[len(self.samples) // 2 :]
        if len(half) < 3:
            return None
        n = len(half)
        mean_t = sum(t for t, _ in half) / n
        mean_m = sum(m for _, m in half) / n
        var = sum((t - mean_t) ** 2 for t, _ in half)
        if var == 0:
            return None
        slope = sum((t - mean_t) * (m - mean_m) for t, m in half) / var
        return slope * 60


# -- locust's CSV files ---------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def number(row: dict[str, str], column: str) -> float:
    value = row.get(column, "")
    try:
        return float(value)
    except ValueError:
        return 0.0


def summarise(prefix: Path, run_seconds: float) -> dict[str, Any]:
    # The locustfile writes the _final_ files after every user stopped (see write_final_csv there).
    stats = [row for row in read_csv(Path(f"{prefix}_final_stats.csv")) if row["Name"] != "Aggregated"]
    failures = read_csv(Path(f"{prefix}_final_failures.csv"))
    rows = []
    for row in stats:
        rows.append(
            {
                "type": row["Type"],
                "name": row["Name"],
                "requests": int(number(row, "Request Count")),
                "failures": int(number(row, "Failure Count")),
                "p50": number(row, "50%"),
                "p95": number(row, "95%"),
                "p99": number(row, "99%"),
                "average_size": number(row, "Average Content Size"),
            }
        )
    http = [r for r in rows if r["type"] not in ("TTFT", "TOKENS/S")]
    tokens = sum(r["requests"] * r["average_size"] for r in rows if r["type"] == "TOKENS/S")
    return {
        "rows": rows,
        "requests": sum(r["requests"] for r in http),
        "failures": sum(r["failures"] for r in http),
        "rate_limited_429": sum(int(number(f, "Occurrences")) for f in failures if "HTTP 429" in f.get("Error", "")),
        "failure_kinds": {f.get("Error", ""): int(number(f, "Occurrences")) for f in failures},
        "generated_tokens": round(tokens),
        "run_seconds": run_seconds,
        "tokens_per_second": round(tokens / run_seconds, 2) if run_seconds > 0 else 0.0,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"{'entry':34} {'requests':>8} {'failures':>8} {'p50':>9} {'p95':>9} {'p99':>9}")
    for row in summary["rows"]:
        unit = "tok/s" if row["type"] == "TOKENS/S" else "ms"
        label = f"{row['type']} {row['name']}"[:34]
        values = " ".join(
            f"{row[p]:>6.0f} {unit:<2}" if unit == "ms" else f"{row[p]:>3.0f} {unit}" for p in ("p50", "p95", "p99")
        )
        print(f"{label:34} {row['requests']:>8} {row['failures']:>8} {values}")
    print()
    print(f"requests: {summary['requests']}, failures: {summary['failures']}, 429s: {summary['rate_limited_429']}")
    print(
        f"aggregate generated tokens/s: {summary['tokens_per_second']} "
        f"({summary['generated_tokens']} tokens in {summary['run_seconds']:.0f} s)"
    )
    for kind, count in summary["failure_kinds"].items():
        print(f"  failure x{count}: {kind}")
    memory = summary.get("memory")
    if memory:
        slope = memory["growth_mib_per_minute"]
        print(
            f"server RSS: {memory['first_mib']:.0f} -> {memory['last_mib']:.0f} MiB (max {memory['max_mib']:.0f}), "
            f"second-half trend {'n/a' if slope is None else f'{slope:+.2f} MiB/min'}"
        )


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("-u", "--users", type=int)
    parser.add_argument("-r", "--spawn-rate", type=float)
    parser.add_argument("-t", "--time", help="run time: 60s, 20m, 1h30m")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "loadtest")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per chat turn (LOADTEST_MAX_TOKENS)")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=3.0,
        help="soak fails when resident memory grows faster than this (MiB/min, second half of the run)",
    )
    parser.add_argument("classes", nargs="*", help="locust user classes (default: all)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    args.users = args.users or profile["users"]
    args.spawn_rate = args.spawn_rate or profile["spawn_rate"]
    args.time = args.time or profile["time"]
    args.check_memory = profile["check_memory"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_seconds = seconds(args.time)
    out: Path = args.out / args.profile
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    for old in out.glob("locust_*.csv"):
        old.unlink()
    print(f"starting the server (embedded model) -> {out / 'server.log'}")
    with LocalServer(out / "server.log", **SERVER_ENV) as server:
        sampler = MemorySampler(server.pid, args.rss_interval)
        sampler.start()
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{run_seconds}s",
            "--stop-timeout", "95", "--csv", str(prefix), "--only-summary",
            "--host", server.url, "--logfile", str(out / "locust.log"), *args.classes,
        ]  # fmt: skip
        env = {**server.env, "LOADTEST_API_KEY": server.api_key, "LOADTEST_MAX_TOKENS": str(args.max_tokens)}
        print(f"locust: {args.users} users for {run_seconds} s against {server.url}")
        with (out / "locust.out").open("wb") as output:
            locust = subprocess.run(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, check=False)
        sampler.stop()
    summary = summarise(prefix, run_seconds)
    if sampler.samples:
        sizes = [m for _, m in sampler.samples]
        summary["memory"] = {
            "samples": len(sizes),
            "first_mib": sizes[0],
            "last_mib": sizes[-1],
            "max_mib": max(sizes),
            "growth_mib_per_minute": sampler.growth_per_minute(),
        }
    summary["locust_exit_code"] = locust.returncode
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"\nCSV files and logs in {out}")
    failed = summary["failures"] > 0 or summary["requests"] == 0 or locust.returncode != 0
    if args.check_memory:
        slope = summary.get("memory", {}).get("growth_mib_per_minute")
        if slope is None:
            print("memory: too few samples to judge; run longer")
            failed = True
        elif slope > args.max_rss_growth:
            print(f"memory keeps growing: {slope:+.2f} MiB/min > {args.max_rss_growth} MiB/min")
            failed = True
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
