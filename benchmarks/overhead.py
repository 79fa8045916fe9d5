"""What the gateway costs per request, measured next to the floor an aiohttp proxy can reach.

Why: a sidecar sits on every LLM call of its application, so its own cost (CPU per
request, latency added, delay of the first streamed token) must stay close to that
of the thinnest possible aiohttp proxy. This script measures it on this machine
and prints Markdown tables; it is a benchmark, not a test: it asserts nothing.

How (see docs/performance.md): the proxies under test run one process each, all
pinned to one core (``GW_CPU``); the load generator (wrk ``-t1``), the upstreams,
the streaming client and this script share the other core (``LOAD_CPU``). Targets:

* ``direct``: the upstream itself (nginx returning a fixed chat.completion;
  for streams, :mod:`benchmarks.stream_upstream`),
* ``pass-through``: :mod:`benchmarks.passthrough_proxy`, the floor,
* ``gateway empty``: ``gateway run`` with ``plugins: []``,
* ``gateway trivial``: the same with :mod:`benchmarks.trivial_plugin`,

each gateway twice: tracing sampled off (``OTEL_TRACES_SAMPLER=always_off``, the
headline) and always on (exporter ``none``: the cost of making the spans); ``default``
in ``TRACING`` adds the gateway as it runs out of the box (no OTEL variable). Each
round measures every target at ``CONC`` connections (throughput) then at
``LOW_CONC`` (latency), the order rotating every round; tables show medians over
rounds. Then the streaming test, one request at a time, targets interleaved. A
target must first answer 200 with the upstream's marker text, or it is reported
NOT MEASURED. For streams every proxy is a second process of its kind whose only
upstream is the streaming one, so the throughput configs stay minimal (no routes).

    benchmarks/run.sh                  # full run, ~8 min
    QUICK=1 benchmarks/run.sh          # smoke run: 1 round of 3 s, ~1 min
    benchmarks/run.sh profile          # py-spy profile of the gateway at CONC

Knobs (env): DURATION=10 LOW_DURATION=$DURATION ROUNDS=3 WARMUP=5 CONC=32 LOW_CONC=1
STREAM_REQUESTS=200 STREAM_WARMUP=20 FIRST_BYTE_MS=20 CHUNK_MS=5 TRACING=off,on
GW_CPU=0 LOAD_CPU=1 READY_TIMEOUT=30 PROFILE_SECONDS=10 PROFILE_RATE=200
RUN_DIR=<new temp dir> QUICK=1. ROUNDS=0 skips the wrk tests, STREAM_REQUESTS=0 the
streaming one. Raw data (wrk and stream JSON lines, logs, configs) stays in RUN_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.fixtures import CHAT_COMPLETION, MARKER, REQUEST, compact, rotated
from benchmarks.trivial_plugin import HEADER as TRIVIAL_HEADER

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
READY_URL = re.compile(r"ready on (http://[^\s,]+)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Knobs:
    """The run's settings, from the environment (``QUICK=1`` changes the defaults)."""

    duration: int
    low_duration: int
    rounds: int
    warmup: int
    conc: int
    low_conc: int
    stream_requests: int
    stream_warmup: int
    first_byte_ms: float
    chunk_ms: float
    tracing: tuple[str, ...]
    gw_cpu: int
    load_cpu: int
    ready_timeout: float
    profile_seconds: int
    profile_rate: int
    run_dir: Path

    @classmethod
    def from_env(cls) -> Knobs:
        env = os.environ
        quick = env.get("QUICK", "") not in ("", "0")

        def number(name: str, default: float, quick_default: float | None = None) -> float:
            value = env.get(name)
            if value:
                return float(value)
            return quick_default if quick and quick_default is not None else default

        duration = int(number("DURATION", 10, 3))
        tracing = tuple(part.strip() for part in env.get("TRACING", "off,on").split(",") if part.strip())
        if not tracing or set(tracing) - {"off", "on", "default"}:
            raise SystemExit("TRACING must list off, on and/or default (e.g. TRACING=off,on)")
        run_dir = Path(env["RUN_DIR"]) if env.get("RUN_DIR") else Path(tempfile.mkdtemp(prefix="gateway-bench."))
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            duration=duration,
            low_duration=int(number("LOW_DURATION", duration)),
            rounds=int(number("ROUNDS", 3, 1)),
            warmup=int(number("WARMUP", 5, 1)),
            conc=int(number("CONC", 32)),
            low_conc=int(number("LOW_CONC", 1)),
            stream_requests=int(number("STREAM_REQUESTS", 200, 20)),
            stream_warmup=int(number("STREAM_WARMUP", 20, 3)),
            first_byte_ms=number("FIRST_BYTE_MS", 20),
            chunk_ms=number("CHUNK_MS", 5),
            tracing=tracing,
            gw_cpu=int(number("GW_CPU", 0)),
            load_cpu=int(number("LOAD_CPU", 1)),
            ready_timeout=number("READY_TIMEOUT", 30),
            profile_seconds=int(number("PROFILE_SECONDS", 10, 3)),
            profile_rate=int(number("PROFILE_RATE", 200)),
            run_dir=run_dir,
        )


# -- processes -----------------------------------------------------------------------


class Processes:
    """Every process this run starts, each in its own process group, all stopped on exit."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cpu: int, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` pinned to ``cpu``, its output in RUN_DIR/<name>.log."""
        with open(self.run_dir / f"{name}.log", "wb") as out:
            process = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        self.running.append(process)
        return process

    def ready_url(self, name: str, process: subprocess.Popen[bytes], deadline: float) -> str:
        """Wait for the ``ready on URL`` line a process prints; raise if it exits or times out."""
        path = self.run_dir / f"{name}.log"
        while True:
            found = READY_URL.search(path.read_text(errors="replace"))
            if found:
                return found.group(1)
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}): {tail(path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} printed no ready line in time: {tail(path)}")
            time.sleep(0.05)

    def run(self, name: str, cpu: int, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
        """Run ``argv`` pinned to ``cpu`` to its end; its stdout (stderr goes to RUN_DIR/<name>.err)."""
        with open(self.run_dir / f"{name}.err", "ab") as err:
            process = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
            self.running.append(process)
            try:
                out, _ = process.communicate(timeout=timeout)
            finally:
                self.stop(process)
        return out.decode(errors="replace")

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """TERM the process group, KILL it if its leader is still there after 5 s."""
        if process in self.running:
            self.running.remove(process)
        if process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def tail(path: Path, lines: int = 8) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    """One thing measured: where it answers, and what it measured."""

    name: str
    tracing: str = "-"  # off | on | - (not a gateway)
    url: str = ""  # chat completions, non-streaming
    stream_url: str = ""  # chat completions through the streaming upstream
    chain: list[dict[str, str]] | None = None  # a gateway's plugins (None: not a gateway)
    log: dict[str, Any] | None = None  # a gateway's log: section (None: the defaults, access lines on)
    process: subprocess.Popen[bytes] | None = None
    problem: str | None = None  # why it is NOT MEASURED
    stream_problem: str | None = None
    wrk: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # concurrency -> one result per round
    stream: dict[str, Any] | None = None

    @property
    def expect_header(self) -> str | None:
        """A header the answer must carry: proof that the chain ran."""
        return TRIVIAL_HEADER if self.chain else None

    @property
    def label(self) -> str:
        return self.name if self.tracing == "-" else f"{self.name} (tracing {self.tracing})"

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


#: the gateway targets and their chains
GATEWAY_CHAINS: dict[str, list[dict[str, str]]] = {
    "gateway empty": [],
    "gateway trivial": [{"use": "benchmarks.trivial_plugin:Trivial"}],
}


def nginx_config(run_dir: Path, port: int) -> str:
    """nginx answering every chat completion with the fixed body, as cheaply as it can."""
    body = compact(CHAT_COMPLETION).decode()
    assert "'" not in body and "$" not in body and "\\" not in body, "the body must fit an nginx quoted string"
    return f"""# generated by benchmarks/overhead.py
worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_body_temp_path {run_dir}/nginx-body;
    proxy_temp_path {run_dir}/nginx-proxy;
    fastcgi_temp_path {run_dir}/nginx-fastcgi;
    uwsgi_temp_path {run_dir}/nginx-uwsgi;
    scgi_temp_path {run_dir}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def gateway_config(upstream: str, plugins: list[dict[str, str]], log: dict[str, Any] | None = None) -> str:
    """A minimal gateway config: one openai provider, no routes, the given chain (JSON is YAML)."""
    document: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "providers": {"upstream": {"type": "openai", "base_url": upstream, "api_key": "sk-bench"}},
        "plugins": plugins,
    }
    if log is not None:
        document["log"] = log
    return json.dumps(document, indent=2) + "\n"


def check(url: str, *, stream: bool, expect_header: str | None) -> str | None:
    """None when ``url`` answers the request with 200 and the marker, else what was wrong."""
    body = compact(dict(REQUEST, stream=True) if stream else REQUEST)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode(errors="replace")
            headers = answer.headers
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read()[:200].decode(errors='replace')}"
    except (OSError, urllib.error.URLError) as error:
        return f"no answer: {error}"
    if MARKER not in text:
        return f"200 without the upstream's marker: {text[:200]}"
    if stream and "data: [DONE]" not in text:
        return "stream without data: [DONE]"
    if expect_header and expect_header not in headers:
        return f"answer without the {expect_header} header"
    return None


def wait_answers(url: str, deadline: float, *, stream: bool, expect_header: str | None) -> str | None:
    while True:
        problem = check(url, stream=stream, expect_header=expect_header)
        if problem is None or time.monotonic() > deadline:
            return problem
        time.sleep(0.2)


class Bench:
    """Starts the upstreams and the targets, measures, and writes the report."""

    def __init__(self, knobs: Knobs, processes: Processes) -> None:
        self.knobs = knobs
        self.processes = processes
        self.run_dir = knobs.run_dir
        self.body_file = self.run_dir / "request.json"
        self.body_file.write_bytes(compact(REQUEST))
        self.wrk_log = self.run_dir / "wrk.jsonl"
        self.upstream = ""
        self.stream_upstream = ""

    # - start

    def start_upstreams(self) -> None:
        knobs = self.knobs
        port = free_port()
        config = self.run_dir / "nginx.conf"
        config.write_text(nginx_config(self.run_dir, port))
        self.processes.start(
            "nginx",
            knobs.load_cpu,
            [tool("nginx"), "-p", str(self.run_dir), "-c", str(config), "-e", str(self.run_dir / "nginx.error.log")],
        )
        self.upstream = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + knobs.ready_timeout
        stream = self.processes.start(
            "stream-upstream",
            knobs.load_cpu,
            [
                sys.executable,
                "-m",
                "benchmarks.stream_upstream",
                "--first-byte-ms",
                str(knobs.first_byte_ms),
                "--chunk-ms",
                str(knobs.chunk_ms),
            ],
        )
        self.stream_upstream = self.processes.ready_url("stream-upstream", stream, deadline)
        problem = wait_answers(self.upstream + "/v1/chat/completions", deadline, stream=False, expect_header=None)
        if problem:
            raise RuntimeError(f"nginx upstream: {problem}; {tail(self.run_dir / 'nginx.error.log')}")

    def start_targets(self, names: tuple[str, ...], tracing: tuple[str, ...], *, streams: bool = True) -> list[Target]:
        """Start the proxies named, check that they answer; with ``streams`` each runs twice:
        in front of nginx and in front of the streaming upstream."""
        knobs = self.knobs
        targets: list[Target] = []
        if "direct" in names:
            chat = "/v1/chat/completions"
            targets.append(Target("direct", url=self.upstream + chat, stream_url=self.stream_upstream + chat))
        if "pass-through" in names:
            targets.append(Target("pass-through"))
        for sampling in tracing:
            targets += [Target(name, sampling, chain=chain) for name, chain in GATEWAY_CHAINS.items() if name in names]
        upstreams = {"": self.upstream, "-stream": self.stream_upstream} if streams else {"": self.upstream}
        deadline = time.monotonic() + knobs.ready_timeout
        launched = []
        for target in targets:
            if target.name == "direct":
                continue
            for suffix, upstream in upstreams.items():
                name = target.slug + suffix
                argv, env = self.command(target, name, upstream)
                launched.append((target, suffix, name, self.processes.start(name, knobs.gw_cpu, argv, env)))
        for target, suffix, name, process in launched:
            try:
                url = self.processes.ready_url(name, process, deadline) + "/v1/chat/completions"
            except RuntimeError as error:
                if suffix:
                    target.stream_problem = str(error)
                else:
                    target.problem = str(error)
                continue
            if suffix:
                target.stream_url = url
            else:
                target.url, target.process = url, process
        for target in targets:
            if target.problem is None:
                target.problem = wait_answers(target.url, deadline, stream=False, expect_header=target.expect_header)
            if target.problem:
                log(f"{target.label}: NOT MEASURED: {target.problem}")
            if streams and target.stream_problem is None:
                target.stream_problem = wait_answers(
                    target.stream_url, deadline, stream=True, expect_header=target.expect_header
                )
            if streams and target.stream_problem:
                log(f"{target.label}: streaming NOT MEASURED: {target.stream_problem}")
        return targets

    def command(self, target: Target, name: str, upstream: str) -> tuple[list[str], dict[str, str] | None]:
        """How to start a proxy target in front of ``upstream``: argv and environment."""
        if target.chain is None:
            return [sys.executable, "-m", "benchmarks.passthrough_proxy", "--upstream", upstream], None
        config = self.run_dir / f"{name}.yaml"
        config.write_text(gateway_config(upstream, target.chain, target.log))
        if target.tracing == "default":
            env = out_of_the_box_env()
        else:
            env = dict(os.environ, OTEL_TRACES_SAMPLER=f"always_{target.tracing}", OTEL_TRACES_EXPORTER="none")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        )  # benchmarks.trivial_plugin
        return [gateway_command(), "run", "--config", str(config)], env

    # - measure

    def wrk(self, target: Target, conc: int, seconds: int, tag: str) -> dict[str, Any] | None:
        env = dict(os.environ, WRK_BODY_FILE=str(self.body_file), WRK_TAG=f"{target.label}|{conc}|{tag}")
        argv = [
            tool("wrk"),
            "-t1",
            f"-c{conc}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "wrk_post.lua"),
            target.url,
        ]
        out = self.processes.run("wrk", self.knobs.load_cpu, argv, timeout=seconds + 30, env=env)
        found = re.search(r"^WRKJSON (.*)$", out, re.MULTILINE)
        if found is None:
            log(f"wrk gave no summary for {target.label}: {out.strip()[-300:]}")
            return None
        result: dict[str, Any] = json.loads(found.group(1))
        with self.wrk_log.open("a") as out_file:
            out_file.write(found.group(1) + "\n")
        log(
            f"  {target.label:<34} c={conc:<3} {tag:<7} {result['rps']:9.0f} req/s  "
            f"p50 {result['p50_us'] / 1000:7.3f} ms  p99 {result['p99_us'] / 1000:7.3f} ms  non-2xx {result['non2xx']}"
        )
        return result

    def measure(self, targets: list[Target]) -> None:
        knobs = self.knobs
        live = [target for target in targets if target.problem is None] if knobs.rounds else []
        for target in live:
            log(f"warm-up {target.label}: {knobs.warmup} s at c={knobs.conc}")
            self.wrk(target, knobs.conc, knobs.warmup, "warmup")
        for round_index in range(knobs.rounds):
            log(f"round {round_index + 1}/{knobs.rounds}")
            for target in rotated(live, round_index):
                for conc, seconds in ((knobs.conc, knobs.duration), (knobs.low_conc, knobs.low_duration)):
                    result = self.wrk(target, conc, seconds, f"round{round_index + 1}")
                    if result is not None:
                        target.wrk.setdefault(conc, []).append(result)

    def measure_streams(self, targets: list[Target]) -> None:
        knobs = self.knobs
        live = {target.slug: target for target in targets if target.stream_problem is None}
        if not live or not knobs.stream_requests:
            return
        log(
            f"streaming: {knobs.stream_requests} requests per target, one at a time, interleaved; "
            f"upstream waits {knobs.first_byte_ms:g} ms, then {knobs.chunk_ms:g} ms between events"
        )
        argv = [
            sys.executable,
            "-m",
            "benchmarks.stream_client",
            "--requests",
            str(knobs.stream_requests),
            "--warmup",
            str(knobs.stream_warmup),
        ]
        argv += [f"{slug}={target.stream_url}" for slug, target in live.items()]
        budget = (knobs.stream_requests + knobs.stream_warmup) * len(live) * 2 + 60
        out = self.processes.run("stream-client", knobs.load_cpu, argv, timeout=budget)
        found = re.findall(r"^STREAMJSON (.*)$", out, re.MULTILINE)
        (self.run_dir / "stream.jsonl").write_text("".join(f"{line}\n" for line in found))
        for line in found:
            result = json.loads(line)
            live[result["name"]].stream = result


# -- the report ------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def figures(target: Target, conc: int) -> dict[str, float] | None:
    """Medians over rounds of one target at one concurrency, latencies in ms."""
    rounds = target.wrk.get(conc)
    if not rounds:
        return None
    return {
        "rps": median([r["rps"] for r in rounds]),
        "p50": median([r["p50_us"] for r in rounds]) / 1000,
        "p90": median([r["p90_us"] for r in rounds]) / 1000,
        "p99": median([r["p99_us"] for r in rounds]) / 1000,
        "non2xx": sum(r["non2xx"] for r in rounds),
        "socket": sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in rounds),
        "cpu_us": median([r["cpu_us"] for r in rounds if "cpu_us" in r]),
    }


@dataclass(frozen=True)
class Baselines:
    """The figures every other target is compared with (None when not measured)."""

    direct: Target | None
    floor: Target | None
    direct_low: dict[str, float] | None
    floor_high: dict[str, float] | None
    floor_low: dict[str, float] | None
    direct_ttfb: float | None
    floor_ttfb: float | None

    @classmethod
    def of(cls, targets: list[Target], knobs: Knobs) -> Baselines:
        by_label = {target.label: target for target in targets}
        direct, floor = by_label.get("direct"), by_label.get("pass-through")
        return cls(
            direct=direct,
            floor=floor,
            direct_low=figures(direct, knobs.low_conc) if direct else None,
            floor_high=figures(floor, knobs.conc) if floor else None,
            floor_low=figures(floor, knobs.low_conc) if floor else None,
            direct_ttfb=direct.stream["ttfb_p50_ms"] if direct and direct.stream else None,
            floor_ttfb=floor.stream["ttfb_p50_ms"] if floor and floor.stream else None,
        )


def report(knobs: Knobs, targets: list[Target], started: float, busy: float) -> str:
    base = Baselines.of(targets, knobs)
    minutes = (time.monotonic() - started) / 60
    lines = [
        f"## Gateway overhead ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {minutes:.1f} min)",
        "",
        f"machine: {machine()}; its cpus were {busy:.0%} busy before the run",
        f"proxies pinned to cpu {knobs.gw_cpu}, one process each; wrk -t1, upstreams and stream client on cpu "
        f"{knobs.load_cpu}; {versions()}",
        f"{knobs.rounds} round(s) x ({knobs.duration} s at c={knobs.conc} + "
        f"{knobs.low_duration} s at c={knobs.low_conc}), "
        f"warm-up {knobs.warmup} s; request {len(compact(REQUEST))} bytes",
        f"streaming: {knobs.stream_requests} requests per target (after {knobs.stream_warmup} unmeasured), "
        f"upstream first event after {knobs.first_byte_ms:g} ms, {knobs.chunk_ms:g} ms between events",
        f"raw data: {knobs.run_dir}",
    ]
    if knobs.rounds:
        lines += throughput_table(knobs, targets, base)
    if knobs.stream_requests:
        lines += stream_table(targets, base)
    lines += targets_table(knobs, targets, base)
    return "\n".join(lines) + "\n"


def throughput_table(knobs: Knobs, targets: list[Target], base: Baselines) -> list[str]:
    hi, lo = knobs.conc, knobs.low_conc
    lines = [
        "",
        f"### Throughput at c={hi} and latency at c={lo} (median of rounds; ms)",
        "",
        f"| target | req/s c={hi} | x pass-through | CPU µs/req c={hi} | p99 c={hi} | p50 c={lo} | p99 c={lo} | "
        "added p50 vs direct | p50 - pass-through p50 | non-2xx | socket errors | req/s per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in targets:
        high, low = figures(target, hi), figures(target, lo)
        if target.problem or high is None or low is None:
            lines.append(f"| {target.label} | NOT MEASURED: {target.problem or 'no wrk result'} ||||||||||")
            continue
        per_round = " ".join(f"{result['rps']:.0f}" for result in target.wrk[hi])
        ratio = f"{high['rps'] / base.floor_high['rps']:.2f}x" if base.floor_high and target is not base.direct else "-"
        added = f"+{low['p50'] - base.direct_low['p50']:.3f}" if base.direct_low and target is not base.direct else "-"
        beyond = "-"
        if base.floor_low and target not in (base.direct, base.floor):
            beyond = f"{low['p50'] - base.floor_low['p50']:+.3f}"
        errors = f"{high['non2xx'] + low['non2xx']:.0f} | {high['socket'] + low['socket']:.0f}"
        cpu = "-" if math.isnan(high["cpu_us"]) or target is base.direct else f"{high['cpu_us']:.0f}"
        lines.append(
            f"| {target.label} | {high['rps']:.0f} | {ratio} | {cpu} | {high['p99']:.2f} | {low['p50']:.3f} | "
            f"{low['p99']:.3f} | {added} | {beyond} | {errors} | {per_round} |"
        )
    lines += [
        "",
        "direct: wrk and nginx share one core: its req/s is what the box can do, not comparable to a proxy's.",
        "CPU µs/req: the proxy process's CPU time (every thread) over the c=32 run, per answer (peers.py only):",
        "the figure another job on the machine disturbs least.",
    ]
    return lines


def stream_table(targets: list[Target], base: Baselines) -> list[str]:
    lines = [
        "",
        "### Streaming, one request at a time (ms; TTFB = first event with non-empty delta.content)",
        "",
        "| target | ok | bad | TTFB p50 | TTFB p90 | TTFB p99 | total p50 | TTFB p50 - direct "
        "| TTFB p50 - pass-through |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        result = target.stream
        if target.stream_problem or result is None or result["ttfb_p50_ms"] is None:
            reason = target.stream_problem or (
                f"no good stream; answers {result['statuses']}" if result else "no result"
            )
            lines.append(f"| {target.label} | NOT MEASURED: {reason} ||||||||")
            continue
        ttfb = result["ttfb_p50_ms"]
        delta = f"{ttfb - base.direct_ttfb:+.2f}" if base.direct_ttfb is not None and target is not base.direct else "-"
        beyond = "-"
        if base.floor_ttfb is not None and target not in (base.direct, base.floor):
            beyond = f"{ttfb - base.floor_ttfb:+.2f}"
        lines.append(
            f"| {target.label} | {result['ok']} | {result['bad']} | {ttfb:.2f} | {result['ttfb_p90_ms']:.2f} | "
            f"{result['ttfb_p99_ms']:.2f} | {result['total_p50_ms']:.2f} | {delta} | {beyond} |"
        )
    return lines


def targets_table(knobs: Knobs, targets: list[Target], base: Baselines) -> list[str]:
    """The issue's targets for every gateway target; the pass-through's row shows what the floor reaches."""
    lines = [
        "",
        "### Targets from the issue",
        "",
        f"| target | req/s >= 0.9x pass-through (aim 1.0x) | p50 at c={knobs.low_conc} within 0.1 ms of "
        "pass-through | stream TTFB p50 within 1 ms of direct |",
        "|---|---|---|---|",
    ]
    for target in targets:
        if target is base.direct:
            continue
        high, low = figures(target, knobs.conc), figures(target, knobs.low_conc)
        ttfb = target.stream["ttfb_p50_ms"] if target.stream else None
        cells = [
            verdict(high["rps"] / base.floor_high["rps"], 0.9, "x", higher=True)
            if high and base.floor_high
            else "NOT MEASURED",
            verdict(low["p50"] - base.floor_low["p50"], 0.1, " ms") if low and base.floor_low else "NOT MEASURED",
            verdict(ttfb - base.direct_ttfb, 1.0, " ms")
            if ttfb is not None and base.direct_ttfb is not None
            else "NOT MEASURED",
        ]
        lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
    return lines


def verdict(value: float, limit: float, unit: str, *, higher: bool = False) -> str:
    met = value >= limit if higher else value <= limit
    shown = f"{value:.2f}{unit}" if higher else f"{value:+.3f}{unit}"
    return f"{shown}: {'met' if met else 'NOT met'}"


def busy_share(cpus: tuple[int, ...], seconds: float = 1.0) -> float:
    """How busy ``cpus`` are (0..1) over ``seconds``, from /proc/stat (0 when unreadable)."""

    def sample() -> dict[str, list[int]]:
        rows = Path("/proc/stat").read_text().splitlines()
        wanted = {f"cpu{cpu}" for cpu in cpus}
        return {row.split()[0]: [int(v) for v in row.split()[1:]] for row in rows if row.split()[0] in wanted}

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except OSError:
        return 0.0
    spent = idle = 0
    for cpu, values in after.items():
        delta = [now - then for now, then in zip(values, before[cpu], strict=True)]
        spent += sum(delta)
        idle += delta[3] + delta[4]  # idle + iowait
    return (spent - idle) / spent if spent else 0.0


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = f"{os.cpu_count()} cpus ({model or platform.machine()})"
    return f"{cpus}, kernel {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    import aiohttp

    nginx = subprocess.run([tool("nginx"), "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    wrk = subprocess.run([tool("wrk"), "-v"], capture_output=True, text=True).stdout.split()[1:2]
    return f"nginx {nginx}; wrk {' '.join(wrk)}; aiohttp {aiohttp.__version__}"


# -- tools -----------------------------------------------------------------------------


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise SystemExit(f"{name} is not installed")
    return found


def ensure_tools() -> None:
    """Install wrk and nginx-light with apt-get when either is missing (needs root)."""
    wanted = {"wrk": "wrk", "nginx": "nginx-light"}
    missing = [
        package
        for name, package in wanted.items()
        if not (shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin"))
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"missing {', '.join(missing)}: install them (Debian: apt-get install -y {' '.join(missing)})")
    log(f"installing {', '.join(missing)} with apt-get")
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=environment)


def out_of_the_box_env() -> dict[str, str]:
    """This process's environment without any OTEL variable: a gateway's tracing as it runs
    out of the box (``TRACING=default``: nothing exported, the trace page's sampler)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}


def gateway_command() -> str:
    """The ``gateway`` console script of the Python running this script."""
    script = Path(sys.executable).parent / "gateway"
    return str(script) if script.exists() else tool("gateway")


# -- profile ---------------------------------------------------------------------------


#: what ``profile`` may look at: the gateway with either chain, or the floor for comparison
PROFILE_TARGETS = {"empty": "gateway empty", "trivial": "gateway trivial", "pass-through": "pass-through"}


def profile(bench: Bench, processes: Processes, which: str) -> str:
    """py-spy on one proxy (tracing as the first of TRACING) while wrk holds CONC connections.

    ``--nonblocking``: py-spy reads the stacks without stopping the process, so the
    throughput is not disturbed (stopping it 200 times a second costs ~13% here and
    inflates functions that make syscalls); the price is that some stacks come out
    cut short, so "total %" is a lower bound, while "own %" (the innermost frame) is sound.
    """
    knobs = bench.knobs
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise SystemExit(f"py-spy is not installed: {sys.executable} -m pip install py-spy")
    bench.start_upstreams()
    (target,) = bench.start_targets((PROFILE_TARGETS[which],), knobs.tracing[:1], streams=False)
    if target.problem or target.process is None:
        raise SystemExit(f"{target.label} NOT MEASURED: {target.problem}")
    bench.wrk(target, knobs.conc, knobs.warmup, "warmup")
    raw = knobs.run_dir / "profile.txt"
    spy = processes.start(
        "py-spy",
        knobs.load_cpu,
        [str(py_spy), "record", "--pid", str(target.process.pid), "--duration", str(knobs.profile_seconds),
         "--rate", str(knobs.profile_rate), "--nonblocking", "--nolineno", "--format", "raw", "--output", str(raw)],
    )  # fmt: skip
    bench.wrk(target, knobs.conc, knobs.profile_seconds + 2, "profile")
    spy.wait(timeout=30)
    processes.stop(spy)
    if not raw.exists():
        raise SystemExit(f"py-spy wrote nothing: {tail(knobs.run_dir / 'py-spy.log')}")
    return hot_spots(raw, target, knobs)


def hot_spots(raw: Path, target: Target, knobs: Knobs, top: int = 25, cpu_us: float | None = None) -> str:
    """Own and total share of samples per function, from py-spy's collapsed stacks; and,
    when the chain has plugins, each plugin's share (in µs a request given ``cpu_us``)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        packages[package_of(frames[-1])] += count
        owners[owner_of(frames)] += count
        for frame in set(frames):
            total[frame] += count
    lines = [
        f"## Profile: {target.label}, c={knobs.conc}, {knobs.profile_seconds} s at {knobs.profile_rate} Hz, "
        f"{samples} samples (idle excluded)",
        "",
        f"collapsed stacks (open in https://www.speedscope.app or flamegraph.pl): {raw}",
        "",
        "| own % | total % (lower bound) | function (file) |",
        "|---:|---:|---|",
    ]
    for frame, count in own.most_common(top):
        lines.append(f"| {100 * count / samples:.1f} | {100 * total[frame] / samples:.1f} | `{shorten(frame)}` |")
    lines += ["", "| own % | package (first directory of the file) |", "|---:|---|"]
    lines += [f"| {100 * count / samples:.1f} | {package} |" for package, count in packages.most_common()]
    if len(owners) > 1:
        unit = f"µs a request (of {cpu_us:.0f})" if cpu_us else "µs a request (CPU not measured)"
        lines += ["", f"| % | {unit} | whose: a plugin's hooks and what they call, or the core |", "|---:|---:|---|"]
        for owner, count in owners.most_common():
            share = count / samples
            lines.append(f"| {100 * share:.1f} | {share * cpu_us:.1f} | {owner} |" if cpu_us else f"| {100 * share:.1f} | - | {owner} |")
    return "\n".join(lines) + "\n"


#: the core's own dispatch: a plugin frame above one of these is waiting for the rest of the chain
_DISPATCH = ("gateway/chain.py", "gateway/proxy.py", "gateway/app.py", "gateway/upstream.py", "gateway/cli.py")
_CORE = "core (proxy, chain, upstream client, aiohttp, the loop)"


def owner_of(frames: list[str]) -> str:
    """Whose time a sample is: the innermost plugin frame's plugin, with what it calls (RE2,
    msgspec, SQLite, the core's helpers such as ``Response.json``), unless the core's
    dispatch (the chain, the proxy, the upstream client) is deeper: a plugin's ``call_next``
    is the rest of the chain's time, not the plugin's."""
    for frame in reversed(frames):
        path = file_of(frame) or ""
        if path.startswith("plugins/"):
            return "plugin " + path.split("/")[1]
        if path.startswith(_DISPATCH):
            return _CORE
    return _CORE


def package_of(frame: str) -> str:
    """``func (aiohttp/client.py)`` -> ``aiohttp``; the innermost directory py-spy kept."""
    path = file_of(frame) or frame
    return path.split("/", 1)[0] if "/" in path else path


def file_of(frame: str) -> str | None:
    """``func (/long/path/site-packages/aiohttp/client.py)`` -> ``aiohttp/client.py``."""
    found = re.search(r"\(([^()]*)\)$", shorten(frame))
    return found.group(1) if found else None


def shorten(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py)`` -> ``func (pkg/mod.py)``."""
    return re.sub(r"\((?:[^()]*/(?:site-packages|lib/python3\.\d+)/|" + re.escape(str(ROOT)) + "/)", "(", frame)


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Gateway overhead benchmark; knobs are environment variables (see the module docstring)."
    )
    parser.add_argument("command", nargs="?", choices=("run", "profile"), default="run")
    parser.add_argument(
        "target", nargs="?", choices=tuple(PROFILE_TARGETS), default="empty", help="what profile looks at"
    )
    args = parser.parse_args()
    command = args.command
    knobs = Knobs.from_env()
    ensure_tools()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {knobs.load_cpu})  # keep this script off the proxies' core
    processes = Processes(knobs.run_dir)
    bench = Bench(knobs, processes)
    started = time.monotonic()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, interrupted)
    log(f"run dir {knobs.run_dir}")
    busy = busy_share((knobs.gw_cpu, knobs.load_cpu))
    if busy > 0.05:
        log(f"WARNING: the benchmark's cpus are already {busy:.0%} busy: other work will add noise")
    try:
        if command == "profile":
            text = profile(bench, processes, args.target)
        else:
            bench.start_upstreams()
            targets = bench.start_targets(("direct", "pass-through", "gateway empty", "gateway trivial"), knobs.tracing)
            bench.measure(targets)
            bench.measure_streams(targets)
            text = report(knobs, targets, started, busy)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as error:  # an upstream that would not start: nothing to measure
        log(f"cannot run: {error}")
        return 1
    finally:
        processes.stop_all()
    (knobs.run_dir / ("profile.md" if command == "profile" else "result.md")).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
