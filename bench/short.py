"""The short-answer scenario of issue 15: the fixed cost of an answer.

Real support answers are often one sentence, and then what an answer costs before and around
its tokens dominates. The upstream here sends its first token after 1 ms and 20 tokens 5 ms
apart (a path prefix of the fake upstream, so the question the app searches for stays a
shopper's question); every request is a new conversation, REDIS_URL is set, rate limits off.
The questions rotate through QUESTIONS, so the knowledge search meets the store's own topics.

(a) Sequential: one request at a time (a closed loop of one), the targets alternating round by
    round. Added TTFT = the target's p50 (p99) over every round minus the floor's (the fake
    upstream called directly, the same requests) over the same rounds. The median of the
    per-round differences of medians is printed beside it: it is what shared-machine noise
    disturbs least.
(b) Concurrent: CLIENTS clients, each asking again as soon as its answer ends, for a few seconds
    per target, alternating. The server's CPU (utime+stime from /proc) over the round, divided
    by the answers and by the text events received; the answers left in flight at the end are
    waited for and counted. For our app, every answer is checked in PostgreSQL as saved complete.

The machine is shared: the load average before and after each part is kept with its figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import statistics
from collections.abc import Callable
from typing import Any

import loadgen
import procs
from loadgen import StreamResult, Target, percentile

TTFT_MS, TOKENS, GAP_MS = 1.0, 20, 5.0
# The fake upstream reads a stream's timing from this first path segment (its docstring).
TIMING_PREFIX = f"/ttft={TTFT_MS:g},tokens={TOKENS},gap={GAP_MS:g}"
CLIENTS = 40
# The targets (issue 15), judged in the table.
ADDED_P50_TARGET_MS, ADDED_P99_TARGET_MS = 2.0, 5.0
CPU_PER_ANSWER_TARGET_MS = 2.5

# Short questions a shopper asks, on the example store's topics (app/store/knowledge).
QUESTIONS = (
    "Do you ship to Germany?",
    "How long does delivery take?",
    "Where is my order?",
    "Can I return a dress that does not fit?",
    "How do I get a refund?",
    "Is shipping free?",
    "Which payment methods do you accept?",
    "Can I cancel my order?",
    "My parcel arrived damaged, what now?",
    "Do I pay customs in the UK?",
    "How do I wash the quilt?",
    "What size should I order?",
    "Do gift cards expire?",
    "I forgot my password",
    "Is there a warranty on the lamps?",
    "Do you have a discount code?",
    "How can I contact you?",
    "Can I exchange for another colour?",
    "Do you ship to Canada?",
    "When will my refund arrive?",
    "Can I pay with PayPal?",
    "How do I track my parcel?",
    "Can I change my delivery address?",
    "Are your products handmade?",
)


@dataclasses.dataclass
class ShortPlan:
    rounds: int = 10
    per_round: int = 20  # sequential requests per target per round
    concurrent_rounds: int = 2
    concurrent_seconds: float = 5.0  # per target per round
    warmup: int = 30

    @classmethod
    def quick(cls) -> ShortPlan:
        return cls(rounds=4, per_round=15, concurrent_rounds=1, concurrent_seconds=4.0,
                   warmup=20)


@dataclasses.dataclass
class ShortTarget:
    """A target of this scenario and the process whose CPU it costs (None: the floor)."""

    target: Target
    pid: int | None
    # Checks that the app saved these answers: message ids -> (saved complete, asked).
    check_saved: Callable[[list[str]], tuple[int, int]] | None = None

    @property
    def name(self) -> str:
        return self.target.name

    def cpu(self) -> float:
        return procs.cpu_seconds(self.pid) if self.pid is not None else 0.0

    def asking(self, index: int) -> Target:
        return dataclasses.replace(self.target, message=QUESTIONS[index % len(QUESTIONS)])


def floor_target(host: str, port: int) -> Target:
    return Target("direct", "openai", host, port, f"{TIMING_PREFIX}/v1/chat/completions")


def upstream_base_url(host: str, port: int) -> str:
    """OPENAI_BASE_URL for the app under this scenario."""
    return f"http://{host}:{port}{TIMING_PREFIX}/v1"


def load_average() -> float:
    return round(procs.load_average()[0], 2)


async def _sequential_round(target: ShortTarget, start: int, count: int) -> list[StreamResult]:
    return await loadgen.sequential([target.asking(start + i) for i in range(count)])


async def measure(targets: list[ShortTarget], plan: ShortPlan,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Both parts, for every target (the floor first); the figures as a JSON-able dict."""
    out: dict[str, Any] = {"plan": dataclasses.asdict(plan), "clients": CLIENTS,
                           "timing": {"ttft_ms": TTFT_MS, "tokens": TOKENS, "gap_ms": GAP_MS},
                           "load": {}}
    for target in targets:
        await _sequential_round(target, 0, plan.warmup)
        if target.pid is not None:
            # Fill the server's pools (database, upstream) the way the concurrent part will.
            await loadgen.closed_loop(target.asking, CLIENTS, 1.0)
    gc.collect()

    log(f"short answers, sequential: {plan.rounds} rounds x {plan.per_round} requests per target")
    out["load"]["sequential_before"] = load_average()
    ttfts: dict[str, list[float]] = {t.name: [] for t in targets}
    round_medians: dict[str, list[float]] = {t.name: [] for t in targets}
    failures: dict[str, dict[str, int]] = {t.name: {} for t in targets}
    shorts = dict.fromkeys(ttfts, 0)
    seq_cpu = dict.fromkeys(ttfts, 0.0)
    gc.disable()
    try:
        for round_index in range(plan.rounds):
            for target in targets:
                before = target.cpu()
                results = await _sequential_round(target, round_index * plan.per_round,
                                                  plan.per_round)
                seq_cpu[target.name] += target.cpu() - before
                values = [r.ttft * 1000 for r in results if r.ttft is not None and r.error is None]
                ttfts[target.name] += values
                if values:
                    round_medians[target.name].append(statistics.median(values))
                for r in results:
                    if r.error is not None:
                        kind = r.error[:60]
                        failures[target.name][kind] = failures[target.name].get(kind, 0) + 1
                    elif r.done and r.tokens < TOKENS:
                        shorts[target.name] += 1
            gc.collect()
    finally:
        gc.enable()
    out["load"]["sequential_after"] = load_average()
    floor = targets[0].name
    sequential: dict[str, Any] = {}
    for target in targets:
        values = ttfts[target.name]
        figure: dict[str, Any] = {
            "requests": plan.rounds * plan.per_round, "errors": failures[target.name],
            "short": shorts[target.name],
            "ttft_p50_ms": percentile(values, 50), "ttft_p99_ms": percentile(values, 99),
            # Includes what the server does between answers (timers, heartbeats): at one
            # answer at a time that is a larger share than under load.
            "cpu_ms_per_answer": (1000 * seq_cpu[target.name] / (plan.rounds * plan.per_round)
                                  if target.pid is not None else None),
        }
        if target.name != floor:
            f50, f99 = sequential[floor]["ttft_p50_ms"], sequential[floor]["ttft_p99_ms"]
            p50, p99 = figure["ttft_p50_ms"], figure["ttft_p99_ms"]
            figure["added_p50_ms"] = None if p50 is None or f50 is None else p50 - f50
            figure["added_p99_ms"] = None if p99 is None or f99 is None else p99 - f99
            pairs = zip(round_medians[target.name], round_medians[floor], strict=False)
            diffs = [ours - theirs for ours, theirs in pairs]
            figure["added_round_median_ms"] = statistics.median(diffs) if diffs else None
            log(f"  {target.name}: added TTFT p50 {_fmt(figure['added_p50_ms'])} "
                f"p99 {_fmt(figure['added_p99_ms'])} ms (median of rounds "
                f"{_fmt(figure['added_round_median_ms'])}), CPU "
                f"{_fmt(figure['cpu_ms_per_answer'], 2)} ms per answer, "
                f"errors {failures[target.name]}")
        else:
            log(f"  {target.name}: TTFT p50 {_fmt(figure['ttft_p50_ms'])} "
                f"p99 {_fmt(figure['ttft_p99_ms'])} ms (nominal {TTFT_MS:g})")
        sequential[target.name] = figure
    out["sequential"] = sequential

    log(f"short answers, {CLIENTS} concurrent: {plan.concurrent_rounds} rounds x "
        f"{plan.concurrent_seconds:g}s per target")
    out["load"]["concurrent_before"] = load_average()
    totals: dict[str, dict[str, Any]] = {
        t.name: {"answers": 0, "tokens": 0, "cpu_s": 0.0, "wall_s": 0.0, "errors": {},
                 "saved": 0, "checked": 0, "ttfts": []} for t in targets}
    for _ in range(plan.concurrent_rounds):
        for target in targets:
            before = target.cpu()
            results, wall = await loadgen.closed_loop(target.asking, CLIENTS,
                                                      plan.concurrent_seconds)
            total = totals[target.name]
            total["cpu_s"] += target.cpu() - before
            total["wall_s"] += wall
            total["answers"] += sum(1 for r in results if r.done)
            total["tokens"] += sum(r.tokens for r in results)
            total["ttfts"] += [r.ttft * 1000 for r in results
                               if r.ttft is not None and r.error is None]
            for r in results:
                if r.error is not None:
                    total["errors"][r.error[:60]] = total["errors"].get(r.error[:60], 0) + 1
            if target.check_saved is not None:
                saved, checked = target.check_saved([r.message_id for r in results
                                                     if r.message_id and r.done])
                total["saved"] += saved
                total["checked"] += checked
            gc.collect()
            await asyncio.sleep(0.5)  # the last answers' saves
    out["load"]["concurrent_after"] = load_average()
    concurrent: dict[str, Any] = {}
    for target in targets:
        total = totals[target.name]
        ttft_values = total.pop("ttfts")
        answers, tokens, cpu_s = total["answers"], total["tokens"], total["cpu_s"]
        total["answers_per_s"] = answers / total["wall_s"] if total["wall_s"] else None
        total["ttft_p50_ms"] = percentile(ttft_values, 50)
        total["ttft_p99_ms"] = percentile(ttft_values, 99)
        if target.pid is not None:
            total["cpu_ms_per_answer"] = 1000 * cpu_s / answers if answers else None
            total["cpu_ms_per_1k_tokens"] = 1e6 * cpu_s / tokens if tokens else None
            log(f"  {target.name}: {answers} answers ({_fmt(total['answers_per_s'])}/s), "
                f"CPU {_fmt(total['cpu_ms_per_answer'], 2)} ms per answer, "
                f"{_fmt(total['cpu_ms_per_1k_tokens'], 0)} ms per 1,000 tokens, "
                f"TTFT p50 {_fmt(total['ttft_p50_ms'])} ms, errors {total['errors']}"
                + (f", saved {total['saved']}/{total['checked']}"
                   if target.check_saved else ""))
        else:
            log(f"  {target.name}: {answers} answers ({_fmt(total['answers_per_s'])}/s), "
                f"TTFT p50 {_fmt(total['ttft_p50_ms'])} ms")
        concurrent[target.name] = total
    out["concurrent"] = concurrent
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets_met(short: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, evidence) for the issue's short-answer targets."""
    app_seq = short["sequential"].get("app", {})
    app_con = short["concurrent"].get("app", {})
    a50, a99 = app_seq.get("added_p50_ms"), app_seq.get("added_p99_ms")
    cpu = app_con.get("cpu_ms_per_answer")
    per_1k = app_con.get("cpu_ms_per_1k_tokens")
    peer = short["sequential"].get("litellm")
    peer_text = "" if peer is None else f"; LiteLLM {_fmt(peer.get('added_p50_ms'))} ms"
    out: list[tuple[str, bool | None, str]] = [
        (f"added TTFT p50 <= {ADDED_P50_TARGET_MS:g} ms, sequential",
         a50 is not None and a50 <= ADDED_P50_TARGET_MS,
         f"app {_fmt(a50)} ms (median of rounds {_fmt(app_seq.get('added_round_median_ms'))})"
         + peer_text),
        (f"added TTFT p99 <= {ADDED_P99_TARGET_MS:g} ms, sequential",
         a99 is not None and a99 <= ADDED_P99_TARGET_MS, f"app {_fmt(a99)} ms"),
        (f"CPU per answer <= {CPU_PER_ANSWER_TARGET_MS:g} ms at {short['clients']} concurrent "
         f"(<= {CPU_PER_ANSWER_TARGET_MS * 1000 / TOKENS:g} ms per 1,000 tokens)",
         cpu is not None and cpu <= CPU_PER_ANSWER_TARGET_MS,
         f"app {_fmt(cpu, 2)} ms per answer, {_fmt(per_1k, 0)} ms per 1,000 tokens"),
    ]
    if app_con.get("checked"):
        out.append(("every answer saved complete", app_con["saved"] == app_con["checked"],
                    f"{app_con['saved']}/{app_con['checked']}"))
    return out


def table(short: dict[str, Any]) -> str:
    """The markdown of the short-answer section (without its heading)."""
    names = [n for n in short["sequential"] if n != "direct"]
    seq, con = short["sequential"], short["concurrent"]
    plan, load = short["plan"], short["load"]
    lines = [
        f"Upstream: first token after {TTFT_MS:g} ms, {TOKENS} tokens {GAP_MS:g} ms apart; each "
        "request a new conversation with a knowledge search, both messages in PostgreSQL, events "
        "on Redis, rate limits off. Sequential: "
        f"{plan['rounds']} alternating rounds of {plan['per_round']} requests per target "
        f"(load average {load['sequential_before']} before, {load['sequential_after']} after). "
        f"Concurrent: {short['clients']} clients asking again as each answer ends, "
        f"{plan['concurrent_rounds']} alternating rounds of {plan['concurrent_seconds']:g} s "
        f"per target (load average {load['concurrent_before']} before, "
        f"{load['concurrent_after']} after).",
        "",
        "| target | met | evidence |",
        "|---|---|---|",
    ]
    for name, met, evidence in targets_met(short):
        mark = "n/a" if met is None else ("met" if met else "**not met**")
        lines.append(f"| {name} | {mark} | {evidence} |")
    lines += ["", "| figure | direct | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("sequential TTFT p50 / p99 (ms)",
        [f"{_fmt(seq[n]['ttft_p50_ms'], 2)} / {_fmt(seq[n]['ttft_p99_ms'], 2)}"
         for n in ["direct", *names]])
    row("sequential added TTFT p50 / p99 (ms)",
        ["-"] + [f"{_fmt(seq[n]['added_p50_ms'], 2)} / {_fmt(seq[n]['added_p99_ms'], 2)}"
                 for n in names])
    row("sequential added TTFT, median of rounds (ms)",
        ["-"] + [_fmt(seq[n]["added_round_median_ms"], 2) for n in names])
    row("sequential: CPU ms per answer",
        ["-"] + [_fmt(seq[n].get("cpu_ms_per_answer"), 2) for n in names])
    row(f"{short['clients']} concurrent: answers per s",
        [_fmt(con[n]["answers_per_s"]) for n in ["direct", *names]])
    row(f"{short['clients']} concurrent: TTFT p50 / p99 (ms)",
        [f"{_fmt(con[n]['ttft_p50_ms'])} / {_fmt(con[n]['ttft_p99_ms'])}"
         for n in ["direct", *names]])
    row(f"{short['clients']} concurrent: CPU ms per answer",
        ["-"] + [_fmt(con[n].get("cpu_ms_per_answer"), 2) for n in names])
    row(f"{short['clients']} concurrent: CPU ms per 1,000 tokens",
        ["-"] + [_fmt(con[n].get("cpu_ms_per_1k_tokens"), 0) for n in names])
    errors = {n: {**seq[n]["errors"], **con[n]["errors"]} for n in ["direct", *names]}
    row("errors", [str(sum(errors[n].values())) + (f" {errors[n]}" if errors[n] else "")
                   for n in ["direct", *names]])
    return "\n".join(lines)
