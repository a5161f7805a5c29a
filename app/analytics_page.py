"""The analytics page and its CSV tables, made from one `Report` (app/analytics.py).

The page is rendered here as HTML with inline SVG charts (app/svg_charts.py): it needs no
script at all, and every number in a chart is also in a table that downloads as CSV. Every
text that came from a shopper or the store goes through html.escape.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any
from urllib.parse import urlencode

from .analytics import Report
from .language import LANGUAGES
from .svg_charts import Series, legend, stacked_bars

Table = tuple[list[str], list[list[Any]]]

MODEL_COLOURS = ("#1f5fbf", "#c2571a", "#2f8f5b", "#8a3ffc", "#b8860b", "#5b6472")
NO_VOTES = "no votes yet"


def _percent(value: float | None, empty: str = "–") -> str:
    return empty if value is None else f"{value * 100:.0f}%"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _usd(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def daily_table(report: Report) -> Table:
    feedback = report.feedback_stored
    header = ["day", "conversations", "questions", "answered_by_model",
              "answered_by_knowledge_base", "answered_by_person", "handoffs",
              "answers_error", "answers_cancelled", "answers_interrupted"]
    if feedback:
        header += ["thumbs_up", "thumbs_down"]
    rows = []
    for day in report.days:
        row: list[Any] = [day.day.isoformat(), day.conversations, day.questions, day.by_model,
                          day.by_knowledge, day.by_person, day.handoffs, day.errors,
                          day.cancelled, day.interrupted]
        if feedback:
            row += [day.thumbs_up, day.thumbs_down]
        rows.append(row)
    return header, rows


def costs_table(report: Report) -> Table:
    return (["day", "model", "answers", "prompt_tokens", "completion_tokens", "cost_usd"],
            [[row.day.isoformat(), row.model, row.answers, row.prompt_tokens,
              row.completion_tokens, _usd(row.cost_usd)] for row in report.costs])


def top_questions_table(report: Report) -> Table:
    return (["group", "label", "example_question", "questions", "thumbs_down", "votes",
             "thumbs_down_rate"],
            [[group.key, group.label, group.example, group.questions,
              "" if group.thumbs_down is None else group.thumbs_down,
              "" if group.votes is None else group.votes, _rate(group.thumbs_down_rate)]
             for group in report.top_questions])


def languages_table(report: Report) -> Table:
    """Questions per language: answered by the assistant in the shopper's language, or in
    English from the English articles (the fall back where the store has none in theirs)."""
    return (["language", "questions", "answered_by_assistant", "in_their_language",
             "in_english_instead", "share_in_their_language", "share_in_english_instead"],
            [[row.language, row.questions, row.answered, row.in_language, row.in_english,
              _rate(row.share(row.in_language)), _rate(row.share(row.in_english))]
             for row in report.languages])


def summary_table(report: Report) -> Table:
    s = report.summary
    rows: list[list[Any]] = [
        ["conversations", s.conversations], ["questions", s.questions],
        ["answered_by_model", s.by_model], ["answered_by_knowledge_base", s.by_knowledge],
        ["answered_by_person", s.by_person], ["handoffs", s.handoffs],
        ["handoff_rate", _rate(s.handoff_rate)],
        ["median_time_to_first_token_ms", "" if s.median_first_token_ms is None
         else round(s.median_first_token_ms)],
        ["median_time_to_person_s", "" if s.median_person_join_s is None
         else round(s.median_person_join_s)],
        ["thumbs_up_rate", _rate(s.thumbs_up_rate)], ["csat_rate", _rate(s.csat_rate)],
        ["answers_error", s.errors], ["answers_cancelled", s.cancelled],
        ["answers_interrupted", s.interrupted],
        ["today_tokens", report.today.tokens], ["today_cost_usd", _usd(report.today.cost_usd)],
        ["today_budget_tokens", report.today.budget_tokens or ""]]
    return ["metric", "value"], rows


TABLES: dict[str, Callable[[Report], Table]] = {
    "daily": daily_table, "costs": costs_table, "top_questions": top_questions_table,
    "languages": languages_table, "summary": summary_table,
}

# A spreadsheet runs a cell that starts like a formula; shoppers write the questions.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def to_csv(table: Table) -> str:
    header, rows = table
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["'" + cell if isinstance(cell, str) and cell.startswith(_FORMULA_START)
                         else cell for cell in row])
    return out.getvalue()


# -- the page ---------------------------------------------------------------------------------

def _html_table(table: Table, caption: str, csv_url: str, numeric_from: int = 1) -> str:
    header, rows = table
    head = "".join(f'<th scope="col">{html.escape(name.replace("_", " "))}</th>'
                   for name in header)
    body = "".join(
        "<tr>" + "".join(
            (f'<td class="n">{html.escape(str(cell))}</td>' if i >= numeric_from
             and isinstance(cell, (int, float)) else f"<td>{html.escape(str(cell))}</td>")
            for i, cell in enumerate(row)) + "</tr>"
        for row in rows) or f'<tr><td colspan="{len(header)}">Nothing in this period.</td></tr>'
    return (f'<div class="table-head"><h3>{html.escape(caption)}</h3>'
            f'<a class="csv" href="{html.escape(csv_url)}" download>Download CSV</a></div>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figure(label: str, value: str, note: str = "") -> str:
    extra = f'<span class="note">{html.escape(note)}</span>' if note else ""
    return (f'<div class="figure"><dt>{html.escape(label)}</dt>'
            f"<dd>{html.escape(value)}{extra}</dd></div>")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def _money(value: float | None) -> str:
    return "unknown price" if value is None else f"${value:,.2f}"


def render(report: Report, sites: Sequence[tuple[int, str]], site_name: str) -> str:
    s = report.summary
    period = report.period
    query = urlencode({"from": period.first.isoformat(), "to": period.last.isoformat()})

    def csv_url(name: str) -> str:
        return f"/admin/api/sites/{report.site_id}/analytics.csv?table={name}&{query}"

    days: list[date] = [day.day for day in report.days]
    who = [Series("assistant (model)", "#1f5fbf", [d.by_model for d in report.days]),
           Series("knowledge base only", "#7fb2e5", [d.by_knowledge for d in report.days]),
           Series("a person", "#c2571a", [d.by_person for d in report.days])]
    models = sorted({row.model for row in report.costs})
    priced = any(row.cost_usd is not None for row in report.costs)
    spend = [Series(model, MODEL_COLOURS[i % len(MODEL_COLOURS)],
                    [sum((row.cost_usd or 0.0) if priced else row.tokens
                         for row in report.costs if row.model == model and row.day == day)
                     for day in days])
             for i, model in enumerate(models)]
    spend_title = "Cost per day, by model (USD)" if priced else "Tokens per day, by model"
    unpriced = sorted({row.model for row in report.costs if row.cost_usd is None})
    unpriced_note = (f'<p class="hint">No price in MODEL_PRICES, so not in the cost:'
                     f' {html.escape(", ".join(unpriced))}.</p>' if priced and unpriced else "")

    today = report.today
    share = today.budget_share
    meter = ""
    if share is not None:
        meter = (f'<meter min="0" max="1" low="0.5" high="0.8" optimum="0" value="{min(share, 1):.3f}"'
                 f' aria-label="Share of today\'s budget used">{share * 100:.0f}%</meter>')
    budget_line = (f"{today.tokens:,} of {today.budget_tokens:,} tokens ({share * 100:.0f}%)"
                   if today.budget_tokens and share is not None
                   else f"{today.tokens:,} tokens (no daily budget)")
    options = "".join(
        f'<option value="{site_id}"{" selected" if site_id == report.site_id else ""}>'
        f"{html.escape(name)}</option>" for site_id, name in sites)
    votes_note = "" if report.feedback_stored else NO_VOTES
    top_html: Table = (["question", "example", "questions", "thumbs_down_rate"], [
        [group.label, "" if group.example == group.label else group.example, group.questions,
         _percent(group.thumbs_down_rate, "–" if report.feedback_stored else NO_VOTES)]
        for group in report.top_questions])
    languages_html: Table = (
        ["language", "questions", "answered_by_assistant", "in_their_language",
         "in_english_instead"],
        [[f"{LANGUAGES[row.language][1]} ({row.language})" if row.language in LANGUAGES
          else row.language, row.questions, row.answered,
          f"{_percent(row.share(row.in_language))} ({row.in_language:,})",
          f"{_percent(row.share(row.in_english))} ({row.in_english:,})"]
         for row in report.languages])
    figures = "".join([
        _figure("Conversations", f"{s.conversations:,}"),
        _figure("Questions", f"{s.questions:,}"),
        _figure("Answered by the assistant", _percent(s.share(s.by_model)), f"{s.by_model:,}"),
        _figure("By the knowledge base only", _percent(s.share(s.by_knowledge)),
                f"{s.by_knowledge:,}"),
        _figure("By a person", _percent(s.share(s.by_person)), f"{s.by_person:,}"),
        _figure("Handoff rate", _percent(s.handoff_rate), f"{s.handoffs:,} conversations"),
        _figure("Median time to first token", _duration(
            None if s.median_first_token_ms is None else s.median_first_token_ms / 1000)),
        _figure("Median wait for a person", _duration(s.median_person_join_s)),
        _figure("Thumbs up", _percent(s.thumbs_up_rate, "–") if report.feedback_stored
                and s.thumbs_up_rate is not None else NO_VOTES,
                "" if s.thumbs_up is None or s.thumbs_down is None
                else f"{s.thumbs_up + s.thumbs_down:,} votes"),
        _figure("Problem solved (CSAT)", _percent(s.csat_rate) if s.csat_rate is not None
                else (votes_note or "no answers yet")),
        _figure("Ended in error", f"{s.errors:,}",
                f"{s.cancelled:,} cancelled, {s.interrupted:,} interrupted"),
    ])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Analytics · {html.escape(site_name)}</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/admin/assets/admin.css">
<link rel="stylesheet" href="/admin/assets/analytics.css">
</head>
<body class="analytics">
<header class="bar">
  <h1>Analytics</h1>
  <a href="/admin">Inbox</a>
  <a href="/admin/gaps">Knowledge gaps</a>
</header>
<main>
<form class="period" method="get" action="/admin/analytics">
  <label>Site <select name="site">{options}</select></label>
  <label>From <input type="date" name="from" value="{period.first.isoformat()}"></label>
  <label>To <input type="date" name="to" value="{period.last.isoformat()}"></label>
  <button type="submit">Show</button>
</form>
<p class="period-note">{html.escape(site_name)}, {period.first:%d %b %Y} to {period.last:%d %b %Y}
 ({len(days)} days, UTC).</p>
<section aria-labelledby="h-summary">
<h2 id="h-summary">Summary</h2>
<dl class="figures">{figures}</dl>
</section>
<section aria-labelledby="h-today">
<h2 id="h-today">Today's spend</h2>
<p class="spend">{budget_line}, {html.escape(_money(today.cost_usd))} {meter}</p>
</section>
<section aria-labelledby="h-questions">
<h2 id="h-questions">Questions per day, by who answered</h2>
{stacked_bars(days, who, "Questions per day, by who answered")}
{legend(who)}
{_html_table(daily_table(report), "Per day", csv_url("daily"))}
</section>
<section aria-labelledby="h-cost">
<h2 id="h-cost">{html.escape(spend_title)}</h2>
{stacked_bars(days, spend, spend_title, money=priced) if spend else "<p>No tokens used in this period.</p>"}
{legend(spend) if spend else ""}{unpriced_note}
{_html_table(costs_table(report), "Tokens and cost per day and model", csv_url("costs"))}
</section>
<section aria-labelledby="h-top">
<h2 id="h-top">Top questions</h2>
<p class="hint">Grouped by the article or curated answer that answered them, else by their wording.</p>
{_html_table(top_html, "Top questions", csv_url("top_questions"))}
</section>
<section aria-labelledby="h-languages">
<h2 id="h-languages">Questions by language</h2>
<p class="hint">The language each question was written in, and whether the assistant answered
in it or from the English articles instead (a language the help centre has no articles in).</p>
{_html_table(languages_html, "Questions by language", csv_url("languages"))}
</section>
<p><a class="csv" href="{html.escape(csv_url("summary"))}" download>Download the summary as CSV</a></p>
</main>
</body>
</html>
"""
