"""The back office: sign-in, sign-out, and the staff API behind the inbox at /admin.

Authority here is the staff session cookie alone (app/staff.py); a shopper's session id gives
none (staff endpoints never read one), and the shopper endpoints never read this cookie. Every
state-changing request carries the session's CSRF token in X-CSRF-Token (a page on another site
cannot set that header), and the sign-in form carries a token matching its own cookie. A
conversation of a site the staff member does not belong to is a 404, like an unknown one.
"""

from __future__ import annotations

import base64
import binascii
import html
import logging
import secrets
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from .clientip import limit_key
from .conversation_events import conversation_key, site_key, typing_payload, without_stale_typing
from .conversation_notes import ConversationNotes
from .endpoints import (
    announce,
    event_stream,
    last_event_id,
    parse_uuid,
    read_json_body,
    status_payload,
    validate_message,
    whole_number,
)
from .errors import BadRequest, Conflict, CsrfRefused, NotFound, PayloadTooLarge, RateLimited, SignInRequired
from .language import LANGUAGES
from .messages import INBOX_FILTERS, TRANSITIONS, StatusConflict
from .services import services
from .staff import SESSION_ABSOLUTE, StaffSession

log = logging.getLogger(__name__)

ADMIN_DIR = Path(__file__).resolve().parent.parent / "web" / "admin"
SESSION_COOKIE = "staff_session"
LOGIN_CSRF_COOKIE = "staff_login_csrf"
LOGIN_FORM_MAX_BYTES = 4096
INBOX_PAGE_MAX = 200
SEARCH_MAX_CHARS = 200
# The one message a failed sign-in gets: it never says whether the email has an account.
SIGN_IN_FAILED = "The email or password is not right."
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def cookie_secure(request: Request) -> bool:
    """Secure everywhere but plain-HTTP localhost, where a browser would drop a Secure cookie
    (so `make run` works), and where nothing travels off the machine anyway."""
    return not (request.url.scheme == "http" and (request.url.hostname or "") in LOCAL_HOSTS)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int,
               path: str = "/admin") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="lax", secure=cookie_secure(request))


# -- pages ------------------------------------------------------------------------------------


def login_page(request: Request, error: str = "", status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    page = (ADMIN_DIR / "login.html").read_text()
    page = page.replace("{{csrf}}", html.escape(csrf, quote=True))
    page = page.replace("{{error}}", f'<p class="error" role="alert">{html.escape(error)}</p>'
                        if error else "")
    response = HTMLResponse(page, status_code=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    set_cookie(response, request, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
    return response


async def login_form(request: Request) -> Response:
    return login_page(request)


async def read_form(request: Request) -> dict[str, str]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_FORM_MAX_BYTES:
            raise PayloadTooLarge()
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form is not valid.") from None
    return {name: values[0] for name, values in fields.items()}


async def login(request: Request) -> Response:
    app_services = services(request)
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, form.get("csrf", "")):
        return login_page(request, "The sign-in form expired. Please try again.", 403)
    email, password = form.get("email", "").strip(), form.get("password", "")
    try:
        await app_services.limits.check_login(limit_key(request.state.client_ip), email)
    except RateLimited as exc:
        return login_page(request, exc.message, 429, exc.headers)
    store = app_services.staff
    credentials = await store.credentials(email) if email else None
    passwords = app_services.passwords
    # verify() runs for an unknown email too (on a decoy), so the time taken says nothing.
    matches = passwords.verify(None if credentials is None else credentials.password_hash,
                               password)
    if credentials is None or not matches or credentials.disabled:
        return login_page(request, SIGN_IN_FAILED, 401)
    if passwords.needs_rehash(credentials.password_hash):
        await store.rehash(credentials.id, credentials.password_hash, passwords.hash(password))
    session = await store.start_session(credentials.id)
    response = RedirectResponse("/admin", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, session.token,
               max_age=int(SESSION_ABSOLUTE.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response


async def staff_session(request: Request) -> StaffSession:
    if request.url.path.startswith("/admin/api/"):
        # Counted before the cookie is read: requests without one are the ones to slow down.
        await services(request).limits.check_admin(limit_key(request.state.client_ip))
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 100:
        raise SignInRequired()
    session = await services(request).staff.session(token)
    if session is None:
        raise SignInRequired()
    return session


async def changing_session(request: Request) -> StaffSession:
    """The session of a state-changing request, which must carry its CSRF token."""
    session = await staff_session(request)
    sent = request.headers.get("x-csrf-token", "")
    if not secrets.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise CsrfRefused()
    return session


async def inbox_page(request: Request) -> Response:
    try:
        await staff_session(request)
    except SignInRequired:
        return RedirectResponse("/admin/login", status_code=303)
    return FileResponse(ADMIN_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def admin_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = {"inbox.js": "text/javascript", "admin.css": "text/css",
             "analytics.css": "text/css"}.get(name)
    if media is None:
        raise NotFound()
    return FileResponse(ADMIN_DIR / name, media_type=media,
                        headers={"Cache-Control": "no-cache"})


async def logout(request: Request) -> Response:
    session = await changing_session(request)
    await services(request).staff.end_session(session.token_hash)
    return signed_out(request)


async def logout_everywhere(request: Request) -> Response:
    session = await changing_session(request)
    await services(request).staff.end_every_session(session.staff.id)
    return signed_out(request)


def signed_out(request: Request) -> Response:
    response = JSONResponse({"signedOut": True})
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response


# -- the staff API ----------------------------------------------------------------------------


async def me(request: Request) -> Response:
    session = await staff_session(request)
    directory = services(request).sites
    sites = [{"id": site.id, "key": site.key, "name": site.name}
             for site in directory.sites if site.id in session.staff.site_ids]
    member = session.staff
    languages = [{"code": code, "name": name} for code, (_, name) in LANGUAGES.items()]
    return JSONResponse({"email": member.email, "name": member.display_name, "id": member.id,
                         "role": member.role, "csrfToken": session.csrf_token, "sites": sites,
                         "languages": languages},
                        headers={"Cache-Control": "no-store"})


async def conversations(request: Request) -> Response:
    session = await staff_session(request)
    view = request.query_params.get("filter", "all")
    if view not in INBOX_FILTERS:
        raise BadRequest(f"filter must be one of {', '.join(INBOX_FILTERS)}.")
    limit = whole_number(request.query_params.get("limit", "50"), 3)
    if limit is None or not 1 <= limit <= INBOX_PAGE_MAX:
        raise BadRequest(f"limit must be a whole number from 1 to {INBOX_PAGE_MAX}.")
    language = request.query_params.get("language") or None
    if language is not None and language not in LANGUAGES:
        raise BadRequest(f"language must be one of {', '.join(LANGUAGES)}.")
    search = request.query_params.get("q", "").strip() or None
    if search is not None and (len(search) > SEARCH_MAX_CHARS or "\x00" in search):
        raise BadRequest(f"q must be at most {SEARCH_MAX_CHARS} characters.")
    raw_after = request.query_params.get("after")
    after = None if raw_after is None else read_cursor(raw_after)
    rows = await services(request).desk.inbox(session.staff.site_ids, view, session.staff.id,
                                              limit + 1, search, after, language)
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse({"conversations": [row.to_json() for row in rows],
                         "nextCursor": write_cursor(*rows[-1].cursor) if more else None},
                        headers={"Cache-Control": "no-store"})


def write_cursor(last_activity_at: datetime, conversation: uuid.UUID) -> str:
    """Opaque to the page: where the next page of the inbox starts."""
    return base64.urlsafe_b64encode(f"{last_activity_at.isoformat()} {conversation}".encode()
                                    ).decode().rstrip("=")


def read_cursor(raw: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, found = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().partition(" ")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, uuid.UUID(found)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadRequest("after must be a nextCursor of this endpoint.") from None


def conversation_id(request: Request) -> uuid.UUID:
    return parse_uuid(request.path_params["conversation_id"], "conversationId")


async def conversation(request: Request) -> Response:
    session = await staff_session(request)
    found = conversation_id(request)
    desk = services(request).desk
    summary = await desk.summary(found, session.staff.site_ids)
    messages = await desk.transcript(found, session.staff.site_ids)
    notes = await ConversationNotes(services(request).pool).of(found, session.staff.site_ids)
    return JSONResponse({"conversation": summary.to_json(),
                         "messages": [message.to_json() for message in messages],
                         "notes": [note.to_json() for note in notes]},
                        headers={"Cache-Control": "no-store"})


async def conversation_action(request: Request) -> Response:
    session = await changing_session(request)
    action = request.path_params["action"]
    if action == "typing":
        return await agent_typing(request)
    if action not in TRANSITIONS or action == "handoff":
        raise NotFound()
    try:
        summary = await services(request).desk.move(conversation_id(request),
                                                    session.staff.site_ids, action,
                                                    session.staff.id)
    except StatusConflict as exc:
        raise Conflict(f"The conversation is {exc.status}; it cannot be {action} now.") from None
    await announce(request, summary.site_id, summary.id, "status", status_payload(summary))
    return JSONResponse({"conversation": summary.to_json()})


async def agent_message(request: Request) -> Response:
    session = await changing_session(request)
    app_services = services(request)
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise BadRequest('The request body must be a JSON object like {"message": "..."}.')
    text = validate_message(body.get("message"), app_services.settings.max_message_chars)
    try:
        message = await app_services.desk.add_agent_message(
            conversation_id(request), session.staff.site_ids, session.staff.id, text)
    except StatusConflict as exc:
        raise Conflict(f"The conversation is {exc.status}: take it over before writing.") \
            from None
    summary = await app_services.desk.summary(conversation_id(request), session.staff.site_ids)
    await announce(request, summary.site_id, summary.id, "message", message.to_json())
    if app_services.shopper_emails is not None:  # emailed later if the shopper has left
        await app_services.shopper_emails.reply_written(summary.id)
    return JSONResponse({"message": message.to_json()}, status_code=201)


async def conversation_stream(request: Request) -> Response:
    """An agent's view of one conversation, live (the shopper's messages and typing)."""
    session = await staff_session(request)
    after = last_event_id(request)
    app_services = services(request)
    summary = await app_services.desk.summary(conversation_id(request), session.staff.site_ids)
    events = app_services.feeds.follow(conversation_key(summary.site_id, summary.id), after)
    return event_stream(without_stale_typing(events), app_services.connections)


async def site_stream(request: Request) -> Response:
    """A site's inbox, live: `conversation` events with a conversation's summary."""
    session = await staff_session(request)
    raw = request.query_params.get("site")
    site_id = session.staff.site_ids[0] if raw is None and session.staff.site_ids \
        else whole_number(raw or "", 12)
    if site_id is None or site_id not in session.staff.site_ids:
        raise NotFound()
    after = last_event_id(request)
    app_services = services(request)
    return event_stream(app_services.feeds.follow(site_key(site_id), after),
                        app_services.connections)


async def agent_typing(request: Request) -> Response:
    session = await changing_session(request)
    app_services = services(request)
    summary = await app_services.desk.summary(conversation_id(request), session.staff.site_ids)
    await app_services.feeds.publish(conversation_key(summary.site_id, summary.id), "typing",
                                     typing_payload("agent", agentName=session.staff.display_name))
    return Response(status_code=204)
