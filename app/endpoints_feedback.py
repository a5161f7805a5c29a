"""Feedback and knowledge gaps over HTTP: the shopper's votes and CSAT answer, and the back
office's gaps page with the curated answers written from it.

The shopper routes follow app/endpoints.py (a session id and a site key, a 404 for another
session's message); the staff routes follow app/endpoints_admin.py (the staff cookie, the CSRF
token on every change, a site the staff member does not belong to is a 404). Writing curated
answers is for owners: an agent sees the gaps but cannot publish.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from .curated_answers import CuratedAnswers, InvalidCuratedAnswer, check_draft
from .endpoints import parse_uuid, read_json_body, session_param, site_param, whole_number
from .endpoints_admin import ADMIN_DIR, changing_session, staff_session
from .errors import AppError, BadRequest, Conflict, NotFound, SignInRequired
from .feedback import MAX_COMMENT_CHARS, RATINGS, FeedbackStore, NotRateable, NotResolved
from .knowledge_gaps import KnowledgeGaps
from .services import services
from .staff import StaffSession

GAP_DAYS_MAX = 365
GAP_GROUPS_MAX = 200


class OwnersOnly(AppError):
    """Only a site's owner may change its curated answers."""

    status = 403
    code = "owners_only"
    message = "Only an owner of the site can change its curated answers."


# -- the shopper's side -----------------------------------------------------------------------


def parse_vote(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        raise BadRequest('The request body must be a JSON object like {"rating": "up"}.')
    unknown = set(body) - {"rating", "comment"}
    if unknown:
        raise BadRequest(f"Unknown field {sorted(unknown)[0]!r}: send rating and comment only.")
    rating = body.get("rating")
    if rating not in RATINGS:
        raise BadRequest('rating must be "up" or "down".')
    comment = body.get("comment")
    if comment is None:
        return rating, None
    if not isinstance(comment, str):
        raise BadRequest("comment must be a string.")
    if len(comment) > MAX_COMMENT_CHARS:
        raise BadRequest(f"The comment is too long (at most {MAX_COMMENT_CHARS} characters).")
    # PostgreSQL text cannot hold NUL, so refuse it here rather than fail in the UPDATE.
    if "\x00" in comment:
        raise BadRequest("The comment contains a NUL character.")
    try:
        comment.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("The comment contains invalid Unicode.") from None
    return rating, " ".join(comment.split()) or None


async def message_feedback(request: Request) -> Response:
    """A thumbs up or down on a finished answer; voting again replaces the vote."""
    message_id = parse_uuid(request.path_params["message_id"], "messageId")
    session_id = session_param(request)
    site = site_param(request)
    rating, comment = parse_vote(await read_json_body(request))
    try:
        vote = await FeedbackStore(services(request).pool).vote(
            message_id, session_id, site.id, rating, comment)
    except NotRateable:
        raise Conflict("Only a finished answer (the assistant's or a person's) can be"
                       " rated.") from None
    return JSONResponse(vote.to_json())


async def conversation_csat(request: Request) -> Response:
    """"Did we solve your problem?", answered once the conversation is resolved."""
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    site = site_param(request)
    body = await read_json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("solved"), bool) or set(body) - {
            "solved"}:
        raise BadRequest('The request body must be {"solved": true} or {"solved": false}.')
    try:
        answer = await FeedbackStore(services(request).pool).answer_csat(
            session_id, site.id, body["solved"])
    except NotResolved as exc:
        raise Conflict(f"The conversation is {exc.status}: it is asked once it is"
                       " resolved.") from None
    return JSONResponse({"sessionId": str(session_id), "csat": answer})


# -- the back office --------------------------------------------------------------------------


async def gaps_page(request: Request) -> Response:
    try:
        await staff_session(request)
    except SignInRequired:
        return RedirectResponse("/admin/login", status_code=303)
    return FileResponse(ADMIN_DIR / "gaps.html", media_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def gaps_script(request: Request) -> Response:
    return FileResponse(ADMIN_DIR / "gaps.js", media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})


def chosen_site(session: StaffSession, raw: str | None) -> int:
    """The site a request names (none: the staff member's first); not theirs: a 404."""
    site_ids = session.staff.site_ids
    if raw is None and site_ids:
        return site_ids[0]
    site_id = whole_number(raw or "", 12)
    if site_id is None or site_id not in site_ids:
        raise NotFound()
    return site_id


def bounded(request: Request, name: str, default: int, high: int) -> int:
    value = whole_number(request.query_params.get(name, str(default)), 4)
    if value is None or not 1 <= value <= high:
        raise BadRequest(f"{name} must be a whole number from 1 to {high}.")
    return value


async def knowledge_gaps(request: Request) -> Response:
    session = await staff_session(request)
    site_id = chosen_site(session, request.query_params.get("site"))
    days = bounded(request, "days", 30, GAP_DAYS_MAX)
    limit = bounded(request, "limit", 50, GAP_GROUPS_MAX)
    groups = await KnowledgeGaps(services(request).pool).groups(site_id, days, limit)
    return JSONResponse({"siteId": site_id, "days": days,
                         "gaps": [group.to_json() for group in groups]},
                        headers={"Cache-Control": "no-store"})


async def curated_answers(request: Request) -> Response:
    session = await staff_session(request)
    site_id = chosen_site(session, request.query_params.get("site"))
    answers = await CuratedAnswers(services(request).pool).list(site_id)
    return JSONResponse({"siteId": site_id, "answers": [answer.to_json() for answer in answers]},
                        headers={"Cache-Control": "no-store"})


async def owner_session(request: Request) -> StaffSession:
    session = await changing_session(request)
    if session.staff.role != "owner":
        raise OwnersOnly()
    return session


async def checked_draft(request: Request) -> tuple[Any, Any]:
    body = await read_json_body(request)
    try:
        return body, check_draft(body)
    except InvalidCuratedAnswer as exc:
        raise BadRequest(str(exc)) from None


async def publish_curated_answer(request: Request) -> Response:
    session = await owner_session(request)
    body, draft = await checked_draft(request)
    raw_site = body.get("siteId")
    site_id = chosen_site(session, None if raw_site is None else str(raw_site))
    answer = await CuratedAnswers(services(request).pool).publish(site_id, draft,
                                                                  session.staff.id)
    return JSONResponse({"answer": answer.to_json()}, status_code=201)


def answer_id(request: Request) -> int:
    found = whole_number(request.path_params["answer_id"], 12)
    if found is None:
        raise NotFound()
    return found


async def edit_curated_answer(request: Request) -> Response:
    session = await owner_session(request)
    _, draft = await checked_draft(request)
    answer = await CuratedAnswers(services(request).pool).update(
        answer_id(request), session.staff.site_ids, draft)
    return JSONResponse({"answer": answer.to_json()})


async def withdraw_curated_answer(request: Request) -> Response:
    session = await owner_session(request)
    await CuratedAnswers(services(request).pool).withdraw(answer_id(request),
                                                          session.staff.site_ids)
    return Response(status_code=204)
