"""Gateway throughput on clean traffic: the scan plugin with rules only against rules plus the learned stage.

Why: the classifier (docs/scan-classifier.md) runs on every text the scan plugin sees; the issue asks that the
gateway's throughput on clean traffic stays within 10 % of rules only. This prints the figures; it asserts
nothing.

How: like benchmarks/overhead.py. nginx answers every chat completion with a fixed body; each gateway runs in
one process pinned to core ``GW_CPU`` with tracing sampled off; wrk (``-t1``) and nginx share core
``LOAD_CPU``. Every request is a chat call whose user message differs (benchmarks/wrk_scan.lua: ordinary
questions plus a serial number), so the plugin's result cache never answers for it and every request pays the
full scan; the system prompt repeats, as in real traffic, and is a cache hit after the first request. Targets:

* ``no scan``: the gateway with an empty chain (the floor),
* ``rules only``: ``scan`` with its default options (classifier off),
* ``rules + classifier``: ``scan`` with ``classifier: {enabled: true}``,

each measured for ``DURATION`` seconds at ``CONC`` connections, ``ROUNDS`` times, the order rotating every
round; the table shows medians over rounds and the ratio to ``rules only``. On a shared machine req/s moves
with the neighbours' load; the gateway's CPU time per request (user + system time of its process, from
/proc, over each round's requests) does much less, so the table also shows it and the capacity ratio it gives
(rules only's CPU per request over the target's: the throughput ratio of a core the gateway has to itself).

    python benchmarks/scan_throughput.py             # ~2 min: 3 rounds of 10 s
    QUICK=1 python benchmarks/scan_throughput.py     # smoke run: 1 round of 3 s

Knobs (env): DURATION=10 ROUNDS=3 WARMUP=3 CONC=32 GW_CPU=0 LOAD_CPU=1 RUN_DIR=<new temp dir> QUICK=1.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import (  # noqa: E402
    HERE,
    Processes,
    ensure_tools,
    free_port,
    gateway_command,
    gateway_config,
    log,
    nginx_config,
    tail,
    tool,
    wait_answers,
)

TARGETS: dict[str, list[dict[str, Any]]] = {
    "no scan": [],
    "rules only": [{"use": "scan", "config": {"action": "block"}}],
    "rules + classifier": [{"use": "scan", "config": {"action": "block", "classifier": {"enabled": True}}}],
}


def knob(name: str, default: float, quick: float) -> float:
    value = os.environ.get(name)
    if value:
        return float(value)
    return quick if os.environ.get("QUICK", "") not in ("", "0") else default


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classifier_stats(admin: str | None) -> dict[str, Any] | None:
    """The scan plugin's classifier figures from the gateway's admin /stats (None if unavailable)."""
    import urllib.request

    if admin is None:
        return None
    with urllib.request.urlopen(admin + "/stats", timeout=5) as answer:
        plugins = json.loads(answer.read())["plugins"]
    return next((figures for figures in plugins.values() if "classifier_texts" in figures), None)


def main() -> int:
    ensure_tools()
    duration = int(knob("DURATION", 10, 3))
    rounds = int(knob("ROUNDS", 3, 1))
    warmup = int(knob("WARMUP", 3, 1))
    conc = int(knob("CONC", 32, 32))
    gw_cpu, load_cpu = int(knob("GW_CPU", 0, 0)), int(knob("LOAD_CPU", 1, 1))
    run_dir = Path(os.environ["RUN_DIR"]) if os.environ.get("RUN_DIR") else Path(tempfile.mkdtemp(prefix="scan-tp."))
    run_dir.mkdir(parents=True, exist_ok=True)
    processes = Processes(run_dir)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
    stage: dict[str, Any] | None = None
    load_before = os.getloadavg()[0]
    try:
        port = free_port()
        (run_dir / "nginx.conf").write_text(nginx_config(run_dir, port))
        processes.start("nginx", load_cpu, [tool("nginx"), "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"),
                                            "-e", str(run_dir / "nginx.error.log")])
        upstream = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        problem = wait_answers(upstream + "/v1/chat/completions", deadline, stream=False, expect_header=None)
        if problem:
            raise RuntimeError(f"nginx: {problem}")
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        admins: dict[str, str | None] = {}
        env = dict(os.environ, OTEL_TRACES_SAMPLER="always_off", OTEL_TRACES_EXPORTER="none")
        for name, chain in TARGETS.items():
            slug = re.sub(r"[^a-z0-9]+", "-", name)
            config = run_dir / f"{slug}.yaml"
            config.write_text(gateway_config(upstream, chain))
            process = processes.start(slug, gw_cpu, [gateway_command(), "run", "--config", str(config)], env)
            url = processes.ready_url(slug, process, time.monotonic() + 60) + "/v1/chat/completions"
            problem = wait_answers(url, time.monotonic() + 30, stream=False, expect_header=None)
            if problem:
                raise RuntimeError(f"{name}: {problem}; {tail(run_dir / f'{slug}.log')}")
            urls[name] = url
            pids[name] = process.pid  # taskset execs the gateway: same process
            admin = re.search(r"\(admin (http://[^\s)]+)\)", (run_dir / f"{slug}.log").read_text(errors="replace"))
            admins[name] = admin.group(1) if admin else None

        def wrk(name: str, seconds: int, tag: str) -> dict[str, Any] | None:
            wrk_env = dict(os.environ, WRK_TAG=f"{name}|{tag}")
            argv = [tool("wrk"), "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s",
                    "-s", str(HERE / "wrk_scan.lua"), urls[name]]
            cpu_before = cpu_seconds(pids[name])
            out = processes.run("wrk", load_cpu, argv, timeout=seconds + 30, env=wrk_env)
            cpu = cpu_seconds(pids[name]) - cpu_before
            found = re.search(r"^WRKJSON (.*)$", out, re.MULTILINE)
            if found is None:
                log(f"wrk gave no summary for {name}: {out.strip()[-300:]}")
                return None
            result: dict[str, Any] = json.loads(found.group(1))
            result["cpu_us"] = cpu * 1e6 / max(result["requests"], 1)
            log(f"  {name:<20} {tag:<7} {result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms  "
                f"p99 {result['p99_us'] / 1000:6.2f} ms  CPU {result['cpu_us']:5.0f} us/req  non-2xx {result['non2xx']}")
            return result

        names = list(TARGETS)
        for name in names:
            wrk(name, warmup, "warmup")
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                result = wrk(name, duration, f"round{index + 1}")
                if result is not None:
                    results[name].append(result)
        stage = classifier_stats(admins.get("rules + classifier"))
    finally:
        processes.stop_all()

    base = statistics.median(r["rps"] for r in results["rules only"]) if results["rules only"] else float("nan")
    base_cpu = statistics.median(r["cpu_us"] for r in results["rules only"]) if results["rules only"] else float("nan")
    print(f"\nclean chat traffic, distinct user message per request, c={conc}, {rounds} x {duration} s, "
          f"gateway on core {gw_cpu}, wrk + nginx on core {load_cpu}, tracing off; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| chain | req/s (median) | vs rules only | CPU us/request | capacity vs rules only | p50 ms | p99 ms | non-2xx |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        if not rows:
            print(f"| {name} | NOT MEASURED | | | | | | |")
            continue
        rps = statistics.median(r["rps"] for r in rows)
        p50 = statistics.median(r["p50_us"] for r in rows) / 1000
        p99 = statistics.median(r["p99_us"] for r in rows) / 1000
        cpu_us = statistics.median(r["cpu_us"] for r in rows)
        print(f"| {name} | {rps:.0f} | {rps / base:.3f}x | {cpu_us:.0f} | {base_cpu / cpu_us:.3f}x | {p50:.2f} | "
              f"{p99:.2f} | {sum(r['non2xx'] for r in rows)} |")
    if stage:
        print(f"\nclassifier stage inside the gateway: {stage['classifier_texts']} texts, "
              f"{stage['classifier_time_ms_total'] * 1000 / max(stage['classifier_texts'], 1):.1f} us per text "
              "(wall time inside the stage, /stats classifier_time_ms_total / classifier_texts)")
    print(f"\nraw: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
