"""The table, bench/RESULTS.md and the plot, from bench/out/results.json.

    python bench/report.py     # rewrite RESULTS.md and the plot from the last run's JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import short  # noqa: E402

NOMINAL_TTFT_MS = 200.0
MIB = 2**20


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def point(results: dict[str, Any], rate: float, name: str) -> dict[str, Any] | None:
    for key, measured in results["sweep"]["points"].items():
        if float(key) == rate:
            found: dict[str, Any] | None = measured.get(name)
            return found
    return None


def added(results: dict[str, Any], rate: float, name: str) -> tuple[float | None, float | None]:
    p, floor = point(results, rate, name), point(results, rate, "direct")
    if p is None or floor is None:
        return None, None
    s, f = p["summary"], floor["summary"]
    if s["ttft_p50_ms"] is None or f["ttft_p50_ms"] is None:
        return None, None
    return s["ttft_p50_ms"] - f["ttft_p50_ms"], s["ttft_p99_ms"] - f["ttft_p99_ms"]


def knee_text(results: dict[str, Any], name: str) -> str:
    sweep = results["sweep"]
    knee = sweep["knee"].get(name)
    note = sweep["knee_note"].get(name, "")
    if knee is None:
        return note or "n/a"
    if note.startswith(">="):
        return f">= {knee:g} (harness limit at {sweep['harness_limit']:g})"
    return f"{knee:g}"


def knee_value(results: dict[str, Any], name: str) -> float | None:
    value: float | None = results["sweep"]["knee"].get(name)
    return value


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or ours == 0:
        return "n/a"
    return f"{theirs / ours:.1f}x"


def rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [n for n in ("app", "litellm") if n in results["idle_rss"]]
    low, high = results["plan"]["low_rate"], results["plan"]["high_rate"]
    header = ["figure", *names]
    table: list[list[str]] = []

    def row(label: str, values: list[str]) -> None:
        table.append([label, *values])

    row(f"added TTFT p50 / p99 at {low:g}/s (ms)",
        [" / ".join(fmt(v) for v in added(results, low, n)) for n in names])
    row(f"added TTFT p50 / p99 at {high:g}/s (ms)",
        [" / ".join(fmt(v) for v in added(results, high, n)) for n in names])
    row("knee (streams/s, added p99 < 100 ms, no errors)", [knee_text(results, n) for n in names])
    for rate in (low, high):
        values = []
        for n in names:
            p = point(results, rate, n)
            values.append(fmt(p["cpu_ms_per_1k_tokens"], 0) if p else "n/a")
        row(f"CPU ms per 1,000 tokens at {rate:g}/s", values)
    row("idle RSS (MiB)", [fmt(results["idle_rss"][n] / MIB) for n in names])
    opened = results.get("open", {})
    row("RSS per open stream (KiB)",
        [f"{opened[n]['rss_per_stream'] / 1024:.1f} ({opened[n]['peak_open']} open)"
         if n in opened else "n/a" for n in names])
    row("open streams: peak RSS (MiB), errors",
        [f"{opened[n]['peak_rss'] / MIB:.0f}, {opened[n]['errors']}" if n in opened else "n/a"
         for n in names])
    storm = results.get("storm", {})
    values = []
    for n in names:
        if n not in storm:
            values.append("n/a")
            continue
        last = storm[n]["storms"][-1]
        text = (f"upstream idle {'yes' if last['upstream_idle_after'] else 'NO'}, "
                f"RSS +{storm[n]['rss_growth_second_storm'] / MIB:.1f} MiB on 2nd storm")
        if "saved_complete" in last:
            text += (f", saved {last['saved_complete']}/{last['answers']}, "
                     f"DB conns {last['db_connections']}")
        values.append(text)
    row("after the disconnect storm", values)
    return header, table


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, evidence); met None when it cannot be judged (peer missing)."""
    low, high = results["plan"]["low_rate"], results["plan"]["high_rate"]
    has_peer = "litellm" in results["idle_rss"]
    out: list[tuple[str, bool | None, str]] = []
    a50, _ = added(results, low, "app")
    l50, _ = added(results, low, "litellm") if has_peer else (None, None)
    ok = a50 is not None and a50 <= 2.0 and (not has_peer or (l50 is not None and a50 <= l50 / 5))
    out.append((f"added TTFT p50 <= 2 ms and <= 1/5 of LiteLLM's at {low:g}/s", ok,
                f"app {fmt(a50)} ms, LiteLLM {fmt(l50)} ms"))
    _, a99 = added(results, high, "app")
    out.append((f"added TTFT p99 <= 10 ms at {high:g}/s", a99 is not None and a99 <= 10.0,
                f"app {fmt(a99)} ms"))
    app_cpu = (point(results, low, "app") or {}).get("cpu_ms_per_1k_tokens")
    peer_cpu = (point(results, low, "litellm") or {}).get("cpu_ms_per_1k_tokens")
    out.append(("CPU per 1,000 tokens <= 1/8 of LiteLLM's",
                None if peer_cpu is None else (app_cpu is not None and app_cpu * 8 <= peer_cpu),
                f"app {fmt(app_cpu, 0)} ms, LiteLLM {fmt(peer_cpu, 0)} ms at {low:g}/s "
                f"({ratio(app_cpu, peer_cpu)})"))
    app_knee, peer_knee = knee_value(results, "app"), knee_value(results, "litellm")
    harness = results["sweep"]["harness_limit"]
    if peer_knee is None or app_knee is None:
        met: bool | None = None if not has_peer else False
        if has_peer and app_knee is not None and peer_knee is None:
            met = True  # the peer failed at the lowest rate
    else:
        met = app_knee >= 8 * peer_knee
    note = f"app {knee_text(results, 'app')}, LiteLLM {knee_text(results, 'litellm')} streams/s"
    if harness is not None:
        note += f"; the floor itself drifts beyond {harness:g}/s on this machine"
    out.append(("knee >= 8x LiteLLM's", met, note))
    idle_app = results["idle_rss"]["app"]
    idle_peer = results["idle_rss"].get("litellm")
    out.append(("idle RSS <= 1/4 of LiteLLM's",
                None if idle_peer is None else idle_app * 4 <= idle_peer,
                f"app {idle_app / MIB:.0f} MiB, LiteLLM "
                f"{'n/a' if idle_peer is None else f'{idle_peer / MIB:.0f} MiB'}"))
    opened = results.get("open", {}).get("app")
    if opened:
        per = opened["rss_per_stream"]
        out.append(("<= 64 KB per open stream", per <= 64 * 1024,
                    f"{per / 1024:.1f} KiB over {opened['peak_open']} open streams"))
        full = opened["streams"] >= 5000
        out.append(("5,000 open streams in one worker within 512 MB, no errors",
                    full and opened["peak_rss"] <= 512 * MIB and opened["errors"] == 0,
                    f"{opened['peak_open']} open, peak RSS {opened['peak_rss'] / MIB:.0f} MiB, "
                    f"errors {opened['errors']} {opened['error_kinds'] or ''}"
                    + ("" if full else " (--quick: fewer than 5,000)")))
    storm = results.get("storm", {}).get("app")
    if storm:
        last = storm["storms"][-1]
        streaming = last.get("by_status", {}).get("streaming", 0)
        busy_conns = sum(v for k, v in last["db_connections"].items() if k != "idle")
        growth = storm["rss_growth_second_storm"]
        clean = (last["upstream_idle_after"] and streaming == 0
                 and last["saved_complete"] == last["answers"] and busy_conns == 0
                 and growth < 2 * MIB)
        out.append(("zero tasks, connections or memory left after the disconnect storm", clean,
                    f"{last['saved_complete']}/{last['answers']} answers saved complete, "
                    f"{streaming} left streaming, upstream streams left "
                    f"{'0' if last['upstream_idle_after'] else 'some'}, DB connections "
                    f"{last['db_connections']}, RSS growth on the 2nd storm "
                    f"{growth / MIB:.1f} MiB" + (f", app figures {last['debug']}"
                                                  if last.get("debug") else "")))
    return out


def markdown_table(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return "\n".join(lines)


def plain_table(header: list[str], table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     for r in [header, *table])


def sweep_table(results: dict[str, Any]) -> str:
    lines = ["| rate (streams/s) | floor TTFT p50 / p99 (ms) | target | added TTFT p50 / p99 (ms) "
             "| max gap p99 (ms) | errors | CPU ms / 1k tokens |", "|---|---|---|---|---|---|---|"]
    for key, measured in sorted(results["sweep"]["points"].items(), key=lambda kv: float(kv[0])):
        rate = float(key)
        floor = measured["direct"]["summary"]
        for name, p in measured.items():
            if name == "direct":
                continue
            s = p["summary"]
            a50, a99 = added(results, rate, name)
            lines.append(
                f"| {rate:g} | {fmt(floor['ttft_p50_ms'])} / {fmt(floor['ttft_p99_ms'])} | {name} "
                f"| {fmt(a50)} / {fmt(a99)} | {fmt(s['max_gap_p99_ms'])} | {s['errors']} "
                f"| {fmt(p['cpu_ms_per_1k_tokens'], 0)} |")
    return "\n".join(lines)


def limits_text(results: dict[str, Any]) -> str:
    limits = results.get("limits")
    if not limits:
        return "Not measured in this run."
    p, floor = limits["app+limits"], limits["direct"]
    s, f = p["summary"], floor["summary"]
    off = point(results, results["plan"]["high_rate"], "app")
    a50 = None if s["ttft_p50_ms"] is None else s["ttft_p50_ms"] - f["ttft_p50_ms"]
    a99 = None if s["ttft_p99_ms"] is None else s["ttft_p99_ms"] - f["ttft_p99_ms"]
    off50, off99 = added(results, results["plan"]["high_rate"], "app")
    return (f"At {results['plan']['high_rate']:g} streams/s with `RATE_LIMIT_ENABLED=true`: added "
            f"TTFT p50 / p99 {fmt(a50)} / {fmt(a99)} ms (off: {fmt(off50)} / {fmt(off99)}), CPU "
            f"{fmt(p['cpu_ms_per_1k_tokens'], 0)} ms per 1,000 tokens (off: "
            f"{fmt(off['cpu_ms_per_1k_tokens'] if off else None, 0)}), errors {s['errors']} "
            f"{s['error_kinds'] or ''}.")


def write(results: dict[str, Any], bench: Path = BENCH, plot_python: Path | None = None) -> str:
    header, table = rows(results)
    checks = targets(results)
    plot = draw_plot(results, bench / "added_ttft.png", plot_python)
    m, v = results["machine"], results["versions"]
    lb, la = results["load_before"], results["load_after"]
    md = [
        "# Benchmark results (issue 8)",
        "",
        "Written by `make bench` (`python bench/run.py`); rerun it as other issues land. "
        "How the harness works: the docstrings of `bench/run.py`, `bench/loadgen.py` and "
        "`tests/fake_model.py` (the fake model, shared with the tests).",
        "",
        f"- Date: {m['date']}, commit `{m['commit']}`, whole run {results['elapsed_s']:.0f} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"shared with other work: load average {lb[0]:.2f} before, {la[0]:.2f} after",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- LiteLLM: {results['litellm']}",
        "- Server under test pinned to core 0 (`taskset -c 0`), one worker; fake upstream and "
        "load generator on core 1. Upstream: first token after "
        f"{NOMINAL_TTFT_MS:g} ms, 100 tokens 20 ms apart. Open-loop Poisson arrivals, one "
        "connection per stream. Added TTFT = the target's percentile minus the floor's "
        "(the upstream called directly) at the same rate, in the same alternating rounds.",
        "- Our app runs with its full work: each stream a new conversation, both messages in "
        "PostgreSQL, a knowledge search per question, every event copied to Redis Streams for "
        "resume; rate limits off for throughput (`RATE_LIMIT_ENABLED=false`) and on for one run "
        "below.",
        "",
        "## Targets",
        "",
        "| target | met | evidence |",
        "|---|---|---|",
    ]
    for name, met, evidence in checks:
        mark = "n/a (no peer)" if met is None else ("met" if met else "**not met**")
        md.append(f"| {name} | {mark} | {evidence} |")
    if results.get("short"):
        md += ["", short_section(results)]
    md += ["", "## Figures", "", markdown_table(header, table), "",
           "## Rate limits", "", limits_text(results), "",
           "## Sweep", "", sweep_table(results), ""]
    if plot:
        md += ["## Added time to first token against arrival rate", "",
               "![added TTFT](added_ttft.png)", ""]
    # What was tried and what is proposed: written by hand, kept beside the generated part.
    analysis = bench / "analysis.md"
    if analysis.exists():
        md += [analysis.read_text().strip(), ""]
    (bench / "RESULTS.md").write_text("\n".join(md))
    text = plain_table(header, table) + "\n\n"
    text += "\n".join(f"{'MET    ' if met else ('n/a    ' if met is None else 'NOT MET')} "
                      f"{name}: {evidence}" for name, met, evidence in checks)
    return text


SHORT_START, SHORT_END = "<!-- short answers: begin -->", "<!-- short answers: end -->"


def short_section(results: dict[str, Any]) -> str:
    """The short-answer scenario's section of RESULTS.md, between markers so that
    `--scenario short` can rewrite it alone."""
    m, data = results["machine"], results["short"]
    return "\n".join([
        SHORT_START,
        "## Short answers (issue 15): the fixed cost of an answer",
        "",
        f"Measured {m['date']} at commit `{m['commit']}` (`python bench/run.py --scenario short`"
        " or the whole run); how: the docstring of `bench/short.py`.",
        "",
        short.table(data),
        SHORT_END,
    ])


def short_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{'MET    ' if met else ('n/a    ' if met is None else 'NOT MET')} "
                     f"{name}: {evidence}" for name, met, evidence in short.targets_met(data))


def update_short(results: dict[str, Any], bench: Path = BENCH) -> str:
    """Replace (or add, before "## Figures") the short-answer section of RESULTS.md."""
    path = bench / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = short_section(results)
    if SHORT_START in text and SHORT_END in text:
        head, rest = text.split(SHORT_START, 1)
        _, tail = rest.split(SHORT_END, 1)
        text = head + section + tail
    elif "\n## Figures" in text:
        head, tail = text.split("\n## Figures", 1)
        text = head + section + "\n\n## Figures" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return short.table(results["short"]) + "\n\n" + short_text(results["short"])


def draw_plot(results: dict[str, Any], path: Path, python: Path | None) -> bool:
    """The plot is drawn by bench/plot.py in whichever venv has matplotlib."""
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for key, measured in results["sweep"]["points"].items():
        rate = float(key)
        floor = measured["direct"]["summary"]
        series.setdefault("direct (vs nominal)", []).append(
            (rate, floor["ttft_p50_ms"] and floor["ttft_p50_ms"] - NOMINAL_TTFT_MS,
             floor["ttft_p99_ms"] and floor["ttft_p99_ms"] - NOMINAL_TTFT_MS))
        for name in measured:
            if name != "direct":
                a50, a99 = added(results, rate, name)
                series.setdefault(name, []).append((rate, a50, a99))
    out_json = BENCH / "out" / "plot_series.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(series))
    for candidate in [python, Path(sys.executable)]:
        if candidate is None or not candidate.exists():
            continue
        done = subprocess.run([str(candidate), str(BENCH / "plot.py"), str(out_json), str(path)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return True
    print("plot skipped: no python with matplotlib (bench/.venv-litellm has it after install)")
    return False


if __name__ == "__main__":
    raw = json.loads((BENCH / "out" / "results.json").read_text())
    print(write(raw, BENCH, BENCH / ".venv-litellm" / "bin" / "python"))
