"""The back office's analytics: the page, its numbers as JSON, and each table as CSV.

For the owners of a site (role `owner` and the site among theirs): an agent gets 403
`owners_only`, and a site that is not the caller's is a 404 like an unknown one. The period is
`from` and `to` (YYYY-MM-DD, UTC days, both included; by default the last 30 days).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .analytics import Analytics, PeriodError, Report, parse_period
from .analytics_page import TABLES, render, to_csv
from .endpoints import whole_number
from .endpoints_admin import staff_session
from .errors import BadRequest, NotFound, OwnersOnly, SignInRequired
from .services import services
from .spend_alerts import budget_of
from .staff import StaffSession

NO_STORE = {"Cache-Control": "no-store"}


def owned_site(session: StaffSession, raw: str | None) -> int:
    """The site asked for (None: the caller's first), if the caller is one of its owners."""
    site_ids = session.staff.site_ids
    site_id = site_ids[0] if raw is None and site_ids else whole_number(raw or "", 12)
    if site_id is None or site_id not in site_ids:
        raise NotFound()
    if session.staff.role != "owner":
        raise OwnersOnly()
    return site_id


async def build_report(request: Request, site_id: int) -> Report:
    params = request.query_params
    try:
        period = parse_period(params.get("from"), params.get("to"))
    except PeriodError as exc:
        raise BadRequest(str(exc)) from None
    app_services = services(request)
    settings = app_services.settings
    site = app_services.sites.by_id(site_id)
    analytics = Analytics(app_services.pool, settings.model_prices)
    return await analytics.report(site_id, period, budget_of(site, settings.daily_token_budget))


async def analytics_page(request: Request) -> Response:
    try:
        session = await staff_session(request)
    except SignInRequired:
        return RedirectResponse("/admin/login", status_code=303)
    site_id = owned_site(session, request.query_params.get("site"))
    report = await build_report(request, site_id)
    directory = services(request).sites
    sites = [(site.id, site.name) for site in directory.sites if site.id in session.staff.site_ids]
    return HTMLResponse(render(report, sites, directory.by_id(site_id).name), headers=NO_STORE)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _jsonable(value: Any) -> Any:
    """Dates as YYYY-MM-DD and keys in camelCase, like the rest of the staff API."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {_camel(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


async def analytics_json(request: Request) -> Response:
    session = await staff_session(request)
    report = await build_report(request, owned_site(session, request.path_params["site_id"]))
    summary = report.summary
    body = {
        "siteId": report.site_id,
        "from": report.period.first.isoformat(), "to": report.period.last.isoformat(),
        "feedbackStored": report.feedback_stored,
        "summary": {**_jsonable(asdict(summary)),
                    "handoffRate": summary.handoff_rate,
                    "thumbsUpRate": summary.thumbs_up_rate, "csatRate": summary.csat_rate},
        "days": _jsonable([asdict(day) for day in report.days]),
        "costs": _jsonable([asdict(row) for row in report.costs]),
        "today": {**_jsonable(asdict(report.today)), "budgetShare": report.today.budget_share},
        "topQuestions": [{**_jsonable(asdict(group)), "thumbsDownRate": group.thumbs_down_rate}
                         for group in report.top_questions],
        "languages": [{**_jsonable(asdict(row)), "inLanguageShare": row.share(row.in_language),
                       "inEnglishShare": row.share(row.in_english)}
                      for row in report.languages],
    }
    return JSONResponse(body, headers=NO_STORE)


async def analytics_csv(request: Request) -> Response:
    session = await staff_session(request)
    site_id = owned_site(session, request.path_params["site_id"])
    name = request.query_params.get("table", "daily")
    table = TABLES.get(name)
    if table is None:
        raise BadRequest(f"table must be one of {', '.join(TABLES)}.")
    report = await build_report(request, site_id)
    filename = (f"analytics-site{site_id}-{name}-{report.period.first.isoformat()}"
                f"-{report.period.last.isoformat()}.csv")
    return Response(to_csv(table(report)), media_type="text/csv; charset=utf-8",
                    headers={**NO_STORE,
                             "Content-Disposition": f'attachment; filename="{filename}"'})
