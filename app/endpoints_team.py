"""The back office's team work: notes on a conversation, and an owner inviting agents.

Same authority as app/endpoints_admin.py (the staff cookie, the CSRF token on every change, a
conversation of another site is a 404). Accepting an invitation is the one change made without a
session: the link's token is the authority, the form carries a token matching its own cookie
(like sign-in), and attempts count against the sign-in limit of the IP.
"""

from __future__ import annotations

import html
import logging
import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .clientip import limit_key
from .conversation_events import site_key
from .conversation_notes import ConversationNotes
from .endpoints import read_json_body, validate_message
from .endpoints_admin import (
    ADMIN_DIR,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    changing_session,
    conversation_id,
    read_form,
    set_cookie,
)
from .errors import BadRequest, OwnersOnly, RateLimited
from .invites import INVITE_VALID, InviteStore
from .mailer import MailError
from .passwords import PasswordRejected, check_new_password
from .services import services
from .staff import SESSION_ABSOLUTE, StaffError

log = logging.getLogger(__name__)

NOTE_MAX_CHARS = 5000
NAME_MAX_CHARS = 100
TOKEN_MAX_CHARS = 100
EMAIL_MAX_CHARS = 254


async def add_note(request: Request) -> Response:
    session = await changing_session(request)
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise BadRequest('The request body must be a JSON object like {"note": "..."}.')
    text = validate_message(body.get("note"), NOTE_MAX_CHARS)
    app_services = services(request)
    note = await ConversationNotes(app_services.pool).add(
        conversation_id(request), session.staff.site_ids, session.staff.id, text)
    # The site's stream, which only staff can open; never the conversation's (the shopper's).
    await app_services.feeds.publish(site_key(note.site_id), "note", note.to_json())
    return JSONResponse({"note": note.to_json()}, status_code=201)


async def create_invite(request: Request) -> Response:
    session = await changing_session(request)
    owner = session.staff
    if owner.role != "owner":
        raise OwnersOnly()
    body = await read_json_body(request)
    if not isinstance(body, dict):
        raise BadRequest('The request body must be a JSON object like {"email": "..."}.')
    email = body.get("email")
    if not isinstance(email, str) or not 3 <= len(email.strip()) <= EMAIL_MAX_CHARS \
            or email.strip().count("@") != 1 or any(c.isspace() for c in email.strip()):
        raise BadRequest("email must be one email address.")
    email = email.strip()
    site_ids = body.get("siteIds", owner.site_ids)
    if not isinstance(site_ids, list) or not site_ids \
            or not all(isinstance(site, int) and site in owner.site_ids for site in site_ids):
        raise BadRequest("siteIds must name some of your own sites.")
    app_services = services(request)
    try:
        token = await InviteStore(app_services.pool).create(email, site_ids, owner.id)
    except StaffError as exc:
        raise BadRequest(f"Cannot invite {email}: {exc}.") from None
    link = str(request.url_for("invite_page", token=token))
    emailed = False
    mailer = app_services.mailer
    if mailer is not None:
        try:
            await mailer.send(email, f"{owner.display_name} invites you to the support inbox",
                              f"{owner.display_name} invites you to answer shoppers in the"
                              f" support inbox.\n\nSet your password here (the link works once,"
                              f" for {INVITE_VALID.days} days):\n{link}\n")
            emailed = True
        except MailError as exc:
            log.warning("could not email an invitation through %s: %s", mailer.server.where,
                        exc)
    # The link is shown to the owner only when it was not emailed: it signs someone up.
    return JSONResponse({"email": email, "emailed": emailed,
                         "inviteUrl": None if emailed else link}, status_code=201)


def invite_form(request: Request, email: str, error: str = "", status: int = 200) -> Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    page = (ADMIN_DIR / "invite.html").read_text()
    page = page.replace("{{csrf}}", html.escape(csrf, quote=True))
    page = page.replace("{{email}}", html.escape(email))
    page = page.replace("{{error}}", f'<p class="error" role="alert">{html.escape(error)}</p>'
                        if error else "")
    response = HTMLResponse(page, status_code=status,
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    set_cookie(response, request, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
    return response


EXPIRED = ("This invitation link has been used or has expired. Ask the store's owner for a"
           " new one.")


def expired_page() -> Response:
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                        f'<title>Invitation · Support inbox</title>'
                        f'<link rel="stylesheet" href="/admin/assets/admin.css"></head>'
                        f'<body class="login"><main><h1>Support inbox</h1>'
                        f'<p class="error" role="alert">{html.escape(EXPIRED)}</p>'
                        f'<p><a href="/admin/login">Sign in</a></p></main></body></html>',
                        status_code=404, headers={"Cache-Control": "no-store"})


async def invite_page(request: Request) -> Response:
    token = request.path_params["token"]
    invite = None
    if len(token) <= TOKEN_MAX_CHARS:
        invite = await InviteStore(services(request).pool).find(token)
    if invite is None:
        return expired_page()
    return invite_form(request, invite.email)


async def accept_invite(request: Request) -> Response:
    app_services = services(request)
    token = request.path_params["token"]
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, form.get("csrf", "")):
        return HTMLResponse("The form expired. Please reload the page.", status_code=403)
    try:
        await app_services.limits.check_login(limit_key(request.state.client_ip), "invite")
    except RateLimited as exc:
        return HTMLResponse(exc.message, status_code=429, headers=exc.headers)
    store = InviteStore(app_services.pool)
    invite = await store.find(token) if len(token) <= TOKEN_MAX_CHARS else None
    if invite is None:
        return expired_page()
    name, password = form.get("name", "").strip(), form.get("password", "")
    if not name or len(name) > NAME_MAX_CHARS:
        return invite_form(request, invite.email, "Please give your name.", 400)
    try:
        check_new_password(password)
    except PasswordRejected as exc:
        return invite_form(request, invite.email, f"Please choose another password: {exc}.",
                           400)
    try:
        member = await store.accept(token, name, app_services.passwords.hash(password))
    except StaffError as exc:
        return invite_form(request, invite.email, f"{exc}.", 409)
    if member is None:
        return expired_page()
    session = await app_services.staff.start_session(member.id)
    response = RedirectResponse("/admin", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, session.token,
               max_age=int(SESSION_ABSOLUTE.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response
