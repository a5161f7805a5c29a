"""The shopper's email address, left out of hours, and the link that reopens a conversation
(the rules are in app/shopper_email.py)."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .conversation_events import site_key
from .endpoints import parse_uuid, read_json_body, site_param
from .errors import BadRequest, NotFound, NotFoundError, ServiceUnavailable
from .middleware import browser_scheme, origin_allowed
from .services import services
from .shopper_email import PAGE_URL_MAX_CHARS, ShopperEmails, page_origin, valid_email, valid_token
from .sites import Site

LINK_REFUSED = "This link has expired or is not valid. Please start a new conversation."


def shopper_emails(request: Request) -> ShopperEmails:
    found = services(request).shopper_emails
    if found is None:  # pragma: no cover - set before the app serves
        raise ServiceUnavailable()
    return found


def parse_page_url(raw: object, request: Request, site: Site) -> str | None:
    """The page the widget is on: the reply email links back to it, so it must be a page of
    the site (one of its origins, or this app's own), never a page anyone can name."""
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > PAGE_URL_MAX_CHARS or "\x00" in raw:
        raise BadRequest(f"pageUrl must be a URL of at most {PAGE_URL_MAX_CHARS} characters.")
    origin = page_origin(raw)
    if origin is None or not origin_allowed(origin, request.headers.get("host"),
                                            browser_scheme(request.scope),
                                            site.allowed_origins):
        raise BadRequest("pageUrl must be a page of the store's site (http or https).")
    return raw.split("#", 1)[0]


async def leave_email(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    site = site_param(request)
    body = await read_json_body(request)
    if not isinstance(body, dict) or "email" not in body:
        raise BadRequest('The request body must be a JSON object like {"email": "..."}.')
    email = None if body["email"] is None else valid_email(body["email"])
    if body["email"] is not None and email is None:
        raise BadRequest("Please enter a valid email address, like name@example.com.")
    app_services = services(request)
    # Another site's or an unknown conversation is a 404 before the page is judged: whether a
    # page is the site's is for the conversation's own site to say.
    await app_services.desk.summary(session_id, [site.id])
    page_url = parse_page_url(body.get("pageUrl"), request, site)
    if not await shopper_emails(request).leave(session_id, site.id, email, page_url):
        raise NotFoundError("conversation")
    # The inbox shows the address at once.
    summary = await app_services.desk.summary(session_id, [site.id])
    await app_services.feeds.publish(site_key(site.id), "conversation", summary.to_json())
    return JSONResponse({"sessionId": str(session_id), "email": email})


async def reopen(request: Request) -> Response:
    """A reply email's link: the token for the conversation it reopens. Unknown, expired and
    another site's tokens are refused alike."""
    site = site_param(request)
    body = await read_json_body(request)
    token = valid_token(body.get("token")) if isinstance(body, dict) else None
    if token is None:
        raise BadRequest('The request body must be a JSON object like {"token": "..."}.')
    conversation: uuid.UUID | None = await shopper_emails(request).redeem(token, site.id)
    if conversation is None:
        raise NotFound(LINK_REFUSED)
    return JSONResponse({"sessionId": str(conversation)}, headers={"Cache-Control": "no-store"})
