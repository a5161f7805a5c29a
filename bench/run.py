"""`make bench`: the side-by-side benchmark of issue 8.

Three targets in the same run, in alternating rounds: the fake upstream called directly (the
floor), our app with its full work (every message in PostgreSQL, limits on Redis when enabled)
and the LiteLLM proxy. The server under test runs on core 0, one worker; the fake upstream and
this process (the load generator) on core 1.

    python bench/run.py                    # the whole run, a few minutes
    python bench/run.py --quick            # shorter rounds, for trying the harness itself
    python bench/run.py --scenario short   # only the short-answer scenario, a minute or two
    python bench/run.py --scenario short --against HEAD~1   # and another commit beside it
    make bench BENCH_ARGS="--scenario short --no-litellm"

The short-answer scenario (issue 15: 20-token answers, the fixed cost of an answer) is in
bench/short.py; the whole run ends with it. Run alone, it rewrites only its own section of
bench/RESULTS.md and writes bench/out/short.json.

Writes bench/RESULTS.md, bench/added_ttft.png and bench/out/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import short  # noqa: E402
from loadgen import Load, Summary, Target, summarise  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_CONFIG = BENCH / "litellm_config.yaml"

HOST = "127.0.0.1"
UPSTREAM_PORT, APP_PORT, LITELLM_PORT = 18001, 18002, 18003
AGAINST_PORT = 18004  # --against: another commit's app
SERVER_CPU, HARNESS_CPU = 0, 1
NOMINAL_TTFT_MS, TOKENS, GAP_MS = 200.0, 100, 20.0
# "Within a few ms of nominal": beyond this the generator or the fake upstream is the
# bottleneck, and a difference between targets no longer means anything.
HARNESS_P50_SLACK_MS, HARNESS_P99_SLACK_MS = 3.0, 10.0
KNEE_ADDED_P99_MS = 100.0
BENCH_DB = "bench_chat"
BENCH_REDIS_DB = 13
BENCH_REDIS_PREFIX = "bench"
# The same key is in litellm_config.yaml; it guards a proxy on 127.0.0.1 for one run.
LITELLM_MASTER_KEY = "sk-bench-0123456789abcdef0123456789abcdef0123456789abcdef"
# Each slow stream lasts ~76 s: longer than the ramp that opens 5,000 of them (50 s at 100/s).
SLOW_TIMING = "bench-timing:ttft=200,tokens=20,gap=4000"
SLOW_TOKENS = 20
# Rate limits on, every check done on Redis, but high enough that the load (all from one
# address) is never refused: what the limits cost, not what they refuse.
LIMITS_ON = {
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_IP": "10000000/15minutes",
    "RATE_LIMIT_CHAT_IP": "10000000/15minutes",
    "RATE_LIMIT_CHAT_IP_DAILY": "10000000/day",
    "RATE_LIMIT_SESSION": "10000000/15minutes",
    "RATE_LIMIT_LOOKUP_IP": "10000000/15minutes",
    "DAILY_TOKEN_BUDGET": "0",
}


@dataclasses.dataclass
class Plan:
    """Durations and sizes; --quick shrinks them to try the harness."""

    warmup_streams: int = 30
    low_rate: float = 5.0
    low_seconds: float = 20.0  # per target, split into rounds
    high_rate: float = 40.0
    high_seconds: float = 8.0
    rounds: int = 2
    # Below 5/s only for a peer whose knee is there (LiteLLM's is, on one core).
    sweep_rates: tuple[float, ...] = (1, 2, 3, 5, 10, 20, 30, 40, 50, 60, 80, 100, 120, 160,
                                      200, 250, 300)
    sweep_seconds: float = 4.0
    low_sweep_seconds: float = 10.0  # enough arrivals for a p99 at 1-3 streams/s
    open_streams_app: int = 5000
    # Opening streams costs more than keeping them: a ramp the server can take without
    # queueing (the point is memory, not how fast streams open). Each opening is a whole
    # question (a new conversation, a search, both rows written); at 150/s a slow day's core
    # fell behind and refused 1,667 of them with pool timeouts (bench/analysis.md).
    open_ramp_app: float = 100.0
    open_streams_litellm: int = 500
    open_ramp_litellm: float = 25.0
    storm_clients: int = 500
    storm_rate: float = 250.0
    storm_leave_after: int = 10
    limits_seconds: float = 8.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(warmup_streams=10, low_seconds=6.0, high_seconds=4.0, rounds=1,
                   sweep_rates=(5, 20, 40, 80, 160), sweep_seconds=3.0,
                   open_streams_app=1000, open_ramp_app=250.0, open_streams_litellm=200,
                   storm_clients=200, limits_seconds=4.0)


@dataclasses.dataclass
class Server:
    """A target and, except for the floor, the service that answers it."""

    target: Target
    service: procs.Service | None
    expected_tokens: int = TOKENS

    @property
    def name(self) -> str:
        return self.target.name

    def cpu(self) -> float:
        return procs.cpu_seconds(self.service.pid) if self.service else 0.0

    def rss(self) -> int:
        return procs.rss_bytes(self.service.pid) if self.service else 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- setting up ---------------------------------------------------------------------------


def ensure_litellm() -> tuple[bool, str]:
    """LiteLLM (and matplotlib for the plot) in bench/.venv-litellm; (ok, why not)."""
    python = LITELLM_VENV / "bin" / "python"
    if (LITELLM_VENV / "bin" / "litellm").exists():
        return True, ""
    log("installing LiteLLM into bench/.venv-litellm (once)")
    install_log = OUT / "litellm-install.log"
    with open(install_log, "wb") as f:
        steps = [[sys.executable, "-m", "venv", str(LITELLM_VENV)],
                 [str(python), "-m", "pip", "install", "--quiet", "litellm[proxy]", "matplotlib"]]
        for step in steps:
            try:
                done = subprocess.run(step, stdout=f, stderr=subprocess.STDOUT, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"{' '.join(step[:3])}: {exc}"
            if done.returncode != 0:
                return False, f"pip install failed (exit {done.returncode}); see {install_log}"
    # The reason only when it failed: RESULTS.md once said "litellm missing after install"
    # beside LiteLLM's own figures, because this returned the reason whatever happened.
    installed = (LITELLM_VENV / "bin" / "litellm").exists()
    return installed, "" if installed else "litellm missing after install"


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run(["psql", "-h", HOST, "-U", "postgres", "-d", database, "-XAtqc", sql],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


def fresh_bench_database(name: str = BENCH_DB) -> str:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@{HOST}:5432/{name}"


def flush_bench_redis() -> None:
    """Forget the last run's limits and streams: only our own prefix, Redis may be shared."""
    script = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end"
    subprocess.run(["redis-cli", "-h", HOST, "-n", str(BENCH_REDIS_DB), "EVAL", script, "0",
                    f"{BENCH_REDIS_PREFIX}:*"], capture_output=True, timeout=30)


def app_service(database_url: str, extra_env: dict[str, str], tag: str,
                port: int = APP_PORT, root: Path = ROOT) -> procs.Service:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RATE_LIMIT"))}
    env.update({
        "HOST": HOST, "PORT": str(port),
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://{HOST}:6379/{BENCH_REDIS_DB}",
        "REDIS_PREFIX": BENCH_REDIS_PREFIX,
        "OPENAI_BASE_URL": f"http://{HOST}:{UPSTREAM_PORT}/v1",
        "OPENAI_API_KEY": "bench",
        "OPENAI_MODEL": "bench",
        "RATE_LIMIT_ENABLED": "false",
        # Room for the 5,000 open streams' final saves; PostgreSQL allows 100 by default.
        "DB_POOL_MAX": "20",
        # The whole load comes from one address, straight to uvicorn (no proxy in front).
        "SERVER_MAX_CONNECTIONS_PER_IP": "1000000",
    })
    env.update(extra_env)
    # `python -m app` imports the package from its working directory: `root` picks the tree.
    return procs.Service(f"app{tag}", [sys.executable, "-m", "app"], env,
                         OUT / f"app{tag}.log", cpu=SERVER_CPU, cwd=root)


def start_app(database_url: str, extra_env: dict[str, str], tag: str = "",
              port: int = APP_PORT, root: Path = ROOT) -> procs.Service:
    service = app_service(database_url, extra_env, tag, port, root)
    service.start()
    if not service.wait_http(f"http://{HOST}:{port}/readyz", timeout=60):
        raise RuntimeError(f"the app did not become ready:\n{service.log_tail()}")
    return service


def start_litellm() -> procs.Service | None:
    env = dict(os.environ)
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                "LITELLM_MODE": "PRODUCTION", "DISABLE_SCHEMA_UPDATE": "True"})
    env.pop("DATABASE_URL", None)
    service = procs.Service(
        "litellm",
        [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(LITELLM_CONFIG),
         "--host", HOST, "--port", str(LITELLM_PORT), "--num_workers", "1"],
        env, OUT / "litellm.log", cpu=SERVER_CPU, cwd=BENCH)
    service.start()
    if not service.wait_http(f"http://{HOST}:{LITELLM_PORT}/health/liveliness", timeout=120):
        log(f"LiteLLM did not start:\n{service.log_tail()}")
        service.stop()
        return None
    return service


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def upstream_stats() -> dict[str, int]:
    stats = procs.get_json(f"http://{HOST}:{UPSTREAM_PORT}/stats")
    assert isinstance(stats, dict)
    return stats


async def wait_upstream_idle(limit_s: float = 60.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if upstream_stats()["active"] == 0:
            return True
        await asyncio.sleep(0.2)
    return False


def app_debug_figures() -> dict[str, Any]:
    """Whatever the app exposes about its own tasks (a /metrics gauge), if anything."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{APP_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    figures: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "active_streams" in name or "pool_connections" in name or "waiting" in name:
            with contextlib.suppress(ValueError):
                figures[name] = float(value)
    return figures


# -- measuring ----------------------------------------------------------------------------


@dataclasses.dataclass
class RatePoint:
    rate: float
    summary: Summary
    cpu_s: float
    tokens: int
    generator_cpu_s: float
    wall_s: float

    @property
    def cpu_ms_per_1k_tokens(self) -> float | None:
        return 1e6 * self.cpu_s / self.tokens if self.tokens else None


async def measure_rate(servers: list[Server], rate: float, seconds: float,
                       rounds: int) -> dict[str, RatePoint]:
    """Alternating rounds at one arrival rate; round k uses the same arrivals for every target."""
    collected: dict[str, list[loadgen.StreamResult]] = {s.name: [] for s in servers}
    cpu = dict.fromkeys(collected, 0.0)
    gen_cpu = dict.fromkeys(collected, 0.0)
    wall = dict.fromkeys(collected, 0.0)
    for round_index in range(rounds):
        for server in servers:
            await wait_upstream_idle()
            load = Load(server.target, rate, duration_s=seconds / rounds,
                        seed=1000 + round_index, stream_timeout_s=30)
            before = server.cpu()
            results = await load.run()
            cpu[server.name] += server.cpu() - before
            gen_cpu[server.name] += load.cpu_s
            wall[server.name] += load.wall_s
            collected[server.name].extend(results)
    points = {}
    for server in servers:
        results = collected[server.name]
        summary = summarise(results, server.expected_tokens)
        points[server.name] = RatePoint(rate, summary, cpu[server.name], summary.tokens,
                                        gen_cpu[server.name], wall[server.name])
    return points


async def warm_up(servers: list[Server], streams: int) -> None:
    for server in servers:
        await Load(server.target, 20.0, count=streams, seed=7).run()
    await wait_upstream_idle()


def harness_ok(floor: RatePoint) -> bool:
    s = floor.summary
    return (s.errors == 0 and s.short == 0 and s.ttft_p50_ms is not None
            and s.ttft_p99_ms is not None
            and s.ttft_p50_ms <= NOMINAL_TTFT_MS + HARNESS_P50_SLACK_MS
            and s.ttft_p99_ms <= NOMINAL_TTFT_MS + HARNESS_P99_SLACK_MS)


def added(point: RatePoint, floor: RatePoint) -> tuple[float | None, float | None]:
    s, f = point.summary, floor.summary
    p50 = None if s.ttft_p50_ms is None or f.ttft_p50_ms is None else s.ttft_p50_ms - f.ttft_p50_ms
    p99 = None if s.ttft_p99_ms is None or f.ttft_p99_ms is None else s.ttft_p99_ms - f.ttft_p99_ms
    return p50, p99


def passes(point: RatePoint, floor: RatePoint) -> bool:
    _, p99 = added(point, floor)
    s = point.summary
    return s.errors == 0 and s.short == 0 and p99 is not None and p99 < KNEE_ADDED_P99_MS


async def sweep(servers: list[Server], floor: Server, plan: Plan) -> dict[str, Any]:
    """Rates upward until each target's knee (or the harness limit); 5 and 40/s for all."""
    required = {plan.low_rate: (plan.low_seconds, plan.rounds),
                plan.high_rate: (plan.high_seconds, plan.rounds)}
    rates = sorted(set(plan.sweep_rates) | set(required))
    alive = {s.name for s in servers}
    knee: dict[str, float | None] = dict.fromkeys(alive)
    knee_note: dict[str, str] = dict.fromkeys(alive, "")
    points: dict[float, dict[str, RatePoint]] = {}
    harness_limit: float | None = None
    for rate in rates:
        seconds, rounds = required.get(rate, (plan.sweep_seconds, 1))
        if rate < plan.low_rate:
            seconds = plan.low_sweep_seconds
        active = [s for s in servers if s.name in alive or rate in required]
        if rate < plan.low_rate:
            # Our app is measured from 5/s up; below that only a peer that needs it.
            active = [s for s in active if s.name != "app"]
            if not active:
                continue
        if not active and rate > max(required):
            break
        log(f"rate {rate:g}/s: {', '.join(s.name for s in [floor, *active])} "
            f"({seconds:g}s each)")
        measured = await measure_rate([floor, *active], rate, seconds, rounds)
        points[rate] = measured
        floor_point = measured[floor.name]
        if not harness_ok(floor_point):
            # Other work on this shared machine can disturb one round: measure the floor once
            # more before calling the rate beyond what the machine can measure.
            log(f"  floor off nominal ({fmt(floor_point.summary.ttft_p50_ms)}/"
                f"{fmt(floor_point.summary.ttft_p99_ms)} ms); measuring it once more")
            again = await measure_rate([floor], rate, seconds, rounds)
            if harness_ok(again[floor.name]):
                floor_point = measured[floor.name] = again[floor.name]
        if not harness_ok(floor_point):
            harness_limit = rate
            log(f"  harness limit: the floor itself is {floor_point.summary.ttft_p50_ms:.1f}/"
                f"{floor_point.summary.ttft_p99_ms or float('nan'):.1f} ms p50/p99 "
                f"(nominal {NOMINAL_TTFT_MS:g}); stopping the sweep here")
            for name in alive:
                knee_note[name] = f">= (harness limit at {rate:g}/s)"
            break
        for server in active:
            point = measured[server.name]
            a50, a99 = added(point, floor_point)
            ok = passes(point, floor_point)
            log(f"  {server.name}: added ttft p50 {fmt(a50)} p99 {fmt(a99)} ms, "
                f"errors {point.summary.errors}, short {point.summary.short}, "
                f"cpu {fmt(point.cpu_ms_per_1k_tokens)} ms/1k tokens"
                + ("" if ok else "  <- past the knee"))
            if server.name in alive:
                if ok:
                    knee[server.name] = rate
                else:
                    alive.discard(server.name)
                    if knee[server.name] is None:
                        knee_note[server.name] = f"< {rate:g}/s"
        if not alive and rate >= max(required):
            break
    return {"points": points, "knee": knee, "knee_note": knee_note,
            "harness_limit": harness_limit}


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


async def open_streams(server: Server, count: int, ramp: float) -> dict[str, Any]:
    """`count` slow streams open at once: peak RSS over the idle RSS, per stream."""
    target = dataclasses.replace(server.target, message=f"Where is my parcel? {SLOW_TIMING}",
                                 model="bench-slow" if server.target.kind == "openai" else "bench")
    await wait_upstream_idle()
    baseline = server.rss()
    load = Load(target, ramp, count=count, seed=11, stream_timeout_s=150)
    task = asyncio.create_task(load.run())
    peak, peak_open = baseline, 0
    while not task.done():
        await asyncio.sleep(0.5)
        peak = max(peak, server.rss())
        peak_open = max(peak_open, load.open_streams)
    results = task.result()
    summary = summarise(results, SLOW_TOKENS)
    opened = max(peak_open, 1)
    figure = {
        "streams": count, "peak_open": peak_open, "baseline_rss": baseline, "peak_rss": peak,
        "rss_per_stream": (peak - baseline) / opened, "errors": summary.errors,
        "error_kinds": summary.error_kinds, "short": summary.short,
    }
    log(f"  {server.name}: {peak_open} open, peak RSS {peak / 2**20:.0f} MiB "
        f"({(peak - baseline) / opened / 1024:.1f} KiB per stream), errors {summary.errors}")
    await wait_upstream_idle(120)
    return figure


async def disconnect_storm(server: Server, plan: Plan, database: bool) -> dict[str, Any]:
    """Clients that leave mid-answer, twice: what is left behind after the second storm."""
    rounds = []
    for storm in range(2):
        await wait_upstream_idle()
        before_stats = upstream_stats()
        rss_before = server.rss()
        load = Load(server.target, plan.storm_rate, count=plan.storm_clients, seed=21 + storm,
                    leave_after_tokens=plan.storm_leave_after, stream_timeout_s=30)
        results = await load.run()
        idle = await wait_upstream_idle(60)
        await asyncio.sleep(1.0)  # answers save after their last token
        after_stats = upstream_stats()
        figure: dict[str, Any] = {
            "clients": len(results),
            "left_mid_answer": sum(1 for r in results if r.left),
            "client_errors": sum(1 for r in results if r.error is not None),
            "upstream_idle_after": idle,
            "upstream_abandoned": after_stats["abandoned"] - before_stats["abandoned"],
            "rss_before": rss_before, "rss_after": server.rss(),
        }
        if database:
            ids = [r.message_id for r in results if r.message_id]
            figure.update(saved_answers(ids))
            figure["db_connections"] = db_connections()
            figure["debug"] = app_debug_figures()
        rounds.append(figure)
    first, second = rounds
    result = {"storms": rounds, "rss_growth_second_storm": second["rss_after"] - first["rss_after"]}
    log(f"  {server.name}: " + ", ".join(f"{k}={v}" for k, v in second.items()
                                         if k not in ("rss_before", "rss_after")))
    return result


def saved_answers(ids: list[str], tokens: int = TOKENS, database: str = BENCH_DB
                  ) -> dict[str, Any]:
    if not ids:
        return {"answers": 0, "saved_complete": 0, "still_streaming": 0}
    id_list = ",".join(f"'{i}'" for i in ids if len(i) == 36 and i.count("-") == 4)
    expected_len = len("".join(f"word{i} " for i in range(tokens)))
    rows = psql(f"SELECT status, length(text) = {expected_len}, count(*) FROM messages "
                f"WHERE id IN ({id_list}) GROUP BY 1, 2", database)
    counts: dict[str, int] = {}
    for row in rows.splitlines():
        status, whole, n = row.split("|")
        key = status + ("" if whole == "t" else " (partial)")
        counts[key] = counts.get(key, 0) + int(n)
    return {"answers": len(ids), "saved_complete": counts.get("complete", 0),
            "by_status": counts}


def db_connections() -> dict[str, int]:
    rows = psql(f"SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity "
                f"WHERE datname = '{BENCH_DB}' GROUP BY 1")
    return {state: int(n) for state, n in (r.split("|") for r in rows.splitlines() if r)}


# -- the run ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("starlette", "uvicorn", "sse-starlette", "openai", "httpx", "psycopg",
                 "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    litellm_python = LITELLM_VENV / "bin" / "python"
    if litellm_python.exists():
        done = subprocess.run([str(litellm_python), "-c",
                               "from importlib.metadata import version as v;"
                               "print(v('litellm'), v('uvicorn'), v('openai'))"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            lv, uv, ov = done.stdout.split()
            found["litellm"] = f"{lv} (uvicorn {uv}, openai {ov})"
    return found


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "commit": commit,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def saved_short_answers(database: str) -> Callable[[list[str]], tuple[int, int]]:
    def check(ids: list[str]) -> tuple[int, int]:
        """(answers saved complete with the whole text, answers asked about)."""
        saved = 0
        for start in range(0, len(ids), 500):
            saved += saved_answers(ids[start:start + 500], short.TOKENS,
                                   database)["saved_complete"]
        return saved, len(ids)

    return check


def against_tree_path(ref: str) -> Path:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                            capture_output=True, text=True, check=True).stdout.strip()
    return OUT / f"against-{commit}"


def against_tree(ref: str) -> Path:
    """A detached worktree of `ref` under bench/out, to measure beside this tree."""
    tree = against_tree_path(ref)
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                        tree.name.removeprefix("against-")], capture_output=True, check=True)
    return tree


async def short_answers(args: argparse.Namespace, database_url: str,
                        litellm: procs.Service | None) -> dict[str, Any]:
    """The short-answer scenario with an app of its own (its upstream timing is in its URL)."""
    plan = short.ShortPlan.quick() if args.quick else short.ShortPlan()
    flush_bench_redis()
    upstream_env = {"OPENAI_BASE_URL": short.upstream_base_url(HOST, UPSTREAM_PORT)}
    app = start_app(database_url, upstream_env, "-short")
    started = [app]
    try:
        targets = [
            short.ShortTarget(short.floor_target(HOST, UPSTREAM_PORT), None),
            short.ShortTarget(Target("app", "app", HOST, APP_PORT, "/chat/stream"), app.pid,
                              saved_short_answers(BENCH_DB)),
        ]
        if args.against:
            # Another commit's app in the same alternating rounds: a before/after that the
            # machine's other work disturbs alike. Its own database; the same Redis prefix is
            # fine (answer ids are unique).
            tree = against_tree(args.against)
            database = f"{BENCH_DB}_against"
            other = start_app(fresh_bench_database(database), upstream_env, "-against",
                              AGAINST_PORT, tree)
            started.append(other)
            targets.append(short.ShortTarget(
                Target(f"app@{args.against}", "app", HOST, AGAINST_PORT, "/chat/stream"),
                other.pid, saved_short_answers(database)))
        if litellm is not None:
            targets.append(short.ShortTarget(Target(
                "litellm", "openai", HOST, LITELLM_PORT, "/v1/chat/completions",
                headers=(("Authorization", f"Bearer {LITELLM_MASTER_KEY}"),),
                model="bench-short"), litellm.pid))
        return await short.measure(targets, plan, log)
    finally:
        for service in started:
            service.stop()
        if args.against:
            # Worktrees are listed in the repository every clone shares: leave none behind.
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove",  # noqa: ASYNC221
                            "--force", str(against_tree_path(args.against))],
                           capture_output=True)


async def run(args: argparse.Namespace) -> int:
    if args.scenario == "short":
        return await run_short(args)
    plan = Plan.quick() if args.quick else Plan()
    OUT.mkdir(exist_ok=True)
    nofile = loadgen.raise_open_files_limit()
    os.sched_setaffinity(0, {HARNESS_CPU})
    started = time.monotonic()
    load_before = procs.load_average()
    log(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"open files limit {nofile}")
    if load_before[0] > 1.0:
        log("warning: the machine is busy; figures will be noisier than usual")

    litellm_ok, litellm_why = (False, "skipped (--no-litellm)")
    if not args.no_litellm:
        litellm_ok, litellm_why = ensure_litellm()
        if not litellm_ok:
            log(f"LiteLLM could not be installed: {litellm_why}; measuring the rest")

    services: list[procs.Service] = []
    upstream = procs.Service(
        "upstream",
        [sys.executable, "-m", "tests.fake_model", "--host", HOST,
         "--port", str(UPSTREAM_PORT), "--ttft-ms", str(NOMINAL_TTFT_MS),
         "--tokens", str(TOKENS), "--gap-ms", str(GAP_MS)],
        dict(os.environ), OUT / "upstream.log", cpu=HARNESS_CPU, cwd=ROOT)
    results: dict[str, Any] = {"plan": dataclasses.asdict(plan), "machine": machine(),
                               "versions": versions(), "litellm": litellm_why or "ok"}
    busy = [port for port in (UPSTREAM_PORT, APP_PORT, LITELLM_PORT) if port_in_use(port)]
    if busy:
        print(f"ports {busy} are in use: stop whatever listens there first", file=sys.stderr)
        return 2
    try:
        upstream.start()
        services.append(upstream)
        if not upstream.wait_http(f"http://{HOST}:{UPSTREAM_PORT}/stats", timeout=10):
            raise RuntimeError(f"fake upstream did not start:\n{upstream.log_tail()}")
        database_url = fresh_bench_database()
        flush_bench_redis()
        app = start_app(database_url, {})
        services.append(app)
        litellm = None
        if litellm_ok:
            litellm = start_litellm()
            if litellm is None:
                results["litellm"] = "installed but did not start; see bench/out/litellm.log"
            else:
                services.append(litellm)

        floor = Server(Target("direct", "openai", HOST, UPSTREAM_PORT, "/v1/chat/completions"),
                       None)
        app_server = Server(Target("app", "app", HOST, APP_PORT, "/chat/stream"), app)
        targets = [app_server]
        if litellm is not None:
            targets.append(Server(Target(
                "litellm", "openai", HOST, LITELLM_PORT, "/v1/chat/completions",
                headers=(("Authorization", f"Bearer {LITELLM_MASTER_KEY}"),)), litellm))
        floor_upstream = dataclasses.replace(floor, service=upstream)

        results["start_rss"] = {s.name: s.rss() for s in targets}
        log("warming up")
        await warm_up([floor, *targets], plan.warmup_streams)
        await asyncio.sleep(2)
        results["idle_rss"] = {s.name: s.rss() for s in targets}
        log("idle RSS: " + ", ".join(f"{k} {v / 2**20:.1f} MiB"
                                     for k, v in results["idle_rss"].items()))

        swept = await sweep(targets, floor_upstream, plan)
        results["sweep"] = swept

        log(f"{plan.open_streams_app} slow open streams (and {plan.open_streams_litellm} "
            f"for LiteLLM)")
        results["open"] = {"app": await open_streams(app_server, plan.open_streams_app,
                                                     plan.open_ramp_app)}
        if len(targets) > 1:
            results["open"]["litellm"] = await open_streams(
                targets[1], plan.open_streams_litellm, plan.open_ramp_litellm)

        log(f"disconnect storm: {plan.storm_clients} clients leave after "
            f"{plan.storm_leave_after} tokens")
        results["storm"] = {"app": await disconnect_storm(app_server, plan, database=True)}
        if len(targets) > 1:
            results["storm"]["litellm"] = await disconnect_storm(targets[1], plan,
                                                                 database=False)

        if args.limits:
            log("rate limits on (RATE_LIMIT_ENABLED=true) at "
                f"{plan.high_rate:g}/s, against the same floor")
            app.stop()
            services.remove(app)
            flush_bench_redis()
            limited = start_app(database_url, LIMITS_ON, "-limits")
            services.append(limited)
            limited_server = dataclasses.replace(app_server, service=limited,
                                                 target=dataclasses.replace(
                                                     app_server.target, name="app+limits"))
            await warm_up([limited_server], plan.warmup_streams)
            measured = await measure_rate([floor_upstream, limited_server], plan.high_rate,
                                          plan.limits_seconds, plan.rounds)
            results["limits"] = measured
            point = measured["app+limits"]
            a50, a99 = added(point, measured["direct"])
            log(f"  app+limits: added ttft p50 {fmt(a50)} p99 {fmt(a99)} ms, "
                f"errors {point.summary.errors} {point.summary.error_kinds}, "
                f"cpu {fmt(point.cpu_ms_per_1k_tokens)} ms/1k tokens")

        for service in [s for s in services if s.name.startswith("app")]:
            service.stop()
            services.remove(service)
        results["short"] = await short_answers(args, database_url, litellm)
    finally:
        for service in reversed(services):
            service.stop()
    results["load_after"] = procs.load_average()
    results["load_before"] = load_before
    results["elapsed_s"] = time.monotonic() - started
    encoded = json.dumps(results, default=to_json, indent=1)
    (OUT / "results.json").write_text(encoded)
    table = report.write(json.loads(encoded), BENCH, LITELLM_VENV / "bin" / "python")
    print()
    print(table)
    log(f"done in {results['elapsed_s']:.0f}s; wrote bench/RESULTS.md, bench/added_ttft.png")
    return 0


async def run_short(args: argparse.Namespace) -> int:
    """`--scenario short`: the fake upstream, LiteLLM if it is there, and the short scenario."""
    OUT.mkdir(exist_ok=True)
    loadgen.raise_open_files_limit()
    os.sched_setaffinity(0, {HARNESS_CPU})
    started = time.monotonic()
    load_before = procs.load_average()
    log(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    litellm_ok, litellm_why = (False, "skipped (--no-litellm)")
    if not args.no_litellm:
        litellm_ok, litellm_why = ensure_litellm()
        if not litellm_ok:
            log(f"LiteLLM could not be installed: {litellm_why}; measuring the rest")
    busy = [port for port in (UPSTREAM_PORT, APP_PORT, LITELLM_PORT, AGAINST_PORT)
            if port_in_use(port)]
    if busy:
        print(f"ports {busy} are in use: stop whatever listens there first", file=sys.stderr)
        return 2
    upstream = procs.Service(
        "upstream",
        [sys.executable, "-m", "tests.fake_model", "--host", HOST,
         "--port", str(UPSTREAM_PORT)],
        dict(os.environ), OUT / "upstream.log", cpu=HARNESS_CPU, cwd=ROOT)
    services: list[procs.Service] = []
    results: dict[str, Any] = {"machine": machine(), "versions": versions(),
                               "litellm": litellm_why or "ok"}
    try:
        upstream.start()
        services.append(upstream)
        if not upstream.wait_http(f"http://{HOST}:{UPSTREAM_PORT}/stats", timeout=10):
            raise RuntimeError(f"fake upstream did not start:\n{upstream.log_tail()}")
        litellm = start_litellm() if litellm_ok else None
        if litellm is not None:
            services.append(litellm)
        elif litellm_ok:
            results["litellm"] = "installed but did not start; see bench/out/litellm.log"
        results["short"] = await short_answers(args, fresh_bench_database(), litellm)
    finally:
        for service in reversed(services):
            service.stop()
    results["load_before"] = load_before
    results["load_after"] = procs.load_average()
    results["elapsed_s"] = time.monotonic() - started
    encoded = json.dumps(results, default=to_json, indent=1)
    if args.against:
        # A before/after comparison: printed, not written as the scenario's figures.
        (OUT / "short-against.json").write_text(encoded)
        print()
        print(short.table(results["short"]))
        log(f"done in {results['elapsed_s']:.0f}s; wrote bench/out/short-against.json")
        return 0
    (OUT / "short.json").write_text(encoded)
    text = report.update_short(json.loads(encoded), BENCH)
    print()
    print(text)
    log(f"done in {results['elapsed_s']:.0f}s; wrote the short-answer section of "
        "bench/RESULTS.md and bench/out/short.json")
    return 0


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = dataclasses.asdict(value)
        if isinstance(value, RatePoint):
            data["cpu_ms_per_1k_tokens"] = value.cpu_ms_per_1k_tokens
        return data
    raise TypeError(f"cannot encode {type(value).__name__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds, to try the harness")
    parser.add_argument("--no-litellm", action="store_true", help="leave the peer out")
    parser.add_argument("--scenario", choices=["all", "short"], default="all",
                        help="short: only the short-answer scenario (bench/short.py)")
    parser.add_argument("--against", metavar="REF", default=None,
                        help="with --scenario short: also measure the app at this commit "
                             "(a worktree under bench/out), in the same alternating rounds")
    parser.add_argument("--no-limits", dest="limits", action="store_false",
                        help="skip the run with rate limits on")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        print("bench needs taskset (util-linux)", file=sys.stderr)
        return 2
    loadgen.install_fast_loop()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
