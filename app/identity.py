"""Who the shopper is: a customer token signed by the store, verified here.

The store's own pages know the logged-in customer; the browser is not trusted about it. The
store signs `{"sub": <customer id>, "email": ..., "iat": ..., "exp": ...}` server-side as an
HS256 JWT with the site's identity secret (`python -m app sites secret KEY`) and gives it to the
widget, which sends it as `customerToken`. PyJWT does the cryptography; this module adds the
rules: HS256 only (never `none`, never a public-key algorithm used as an HMAC secret), a life of
at most 24 hours, no `iat` in the future, and, when the token names an audience, this site's key.

A refused token is a 401 whose body never says more than "not valid"; the reason goes to the
log, and the token itself never does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from .errors import AppError, Unauthorized
from .sites import Site

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
MAX_LIFETIME_S = 24 * 3600
# Clocks differ a little between the store's servers and ours.
LEEWAY_S = 60
MAX_TOKEN_CHARS = 4096
MAX_CLAIM_CHARS = 320


@dataclass(frozen=True)
class Customer:
    """A verified shopper: the store's customer id and email."""

    id: str
    email: str


class CustomerTokenRefused(Unauthorized):
    """The customer token is not one this site signed, or no longer valid."""

    code = "invalid_customer_token"
    message = "The customer token is not valid. Please sign in again."

    def __init__(self, reason: str) -> None:
        # Not Unauthorized's WWW-Authenticate: Bearer; the token is in the body, not a header.
        AppError.__init__(self, self.message)
        self.reason = reason


def _refuse(reason: str) -> CustomerTokenRefused:
    log.info("customer token refused: %s", reason)
    return CustomerTokenRefused(reason)


def sign_customer_token(secret: str, customer_id: str, email: str, *, lifetime_s: int = 3600,
                        now: float | None = None, **claims: Any) -> str:
    """What a store does on its server (and the demo page here): a token for one customer."""
    issued = int(time.time() if now is None else now)
    payload = {"sub": customer_id, "email": email, "iat": issued, "exp": issued + lifetime_s,
               **claims}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_customer_token(token: object, site: Site, *, now: float | None = None) -> Customer:
    """The customer the token names, if the site signed it and it is valid now."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise _refuse("not a token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise _refuse("malformed") from None
    # PyJWT would refuse these too (algorithms=[HS256]); checked first so the log says why.
    if header.get("alg") != ALGORITHM:
        raise _refuse(f"algorithm {str(header.get('alg'))[:20]!r} is not {ALGORITHM}")
    moment = time.time() if now is None else now
    claims: dict[str, Any] | None = None
    for secret in site.identity_secrets(datetime.fromtimestamp(moment, UTC)):
        try:
            claims = jwt.decode(
                token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                options={"require": ["sub", "email", "exp", "iat"], "verify_aud": False,
                         "verify_iat": False, "verify_exp": False})
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as exc:
            raise _refuse(f"invalid ({type(exc).__name__})") from None
    if claims is None:
        raise _refuse("bad signature (another site's token, or a rotated-out secret)")
    iat, exp = claims["iat"], claims["exp"]
    if not all(isinstance(value, int | float) and not isinstance(value, bool)
               for value in (iat, exp)):
        raise _refuse("iat and exp must be numbers")
    if iat > moment + LEEWAY_S:
        raise _refuse("issued in the future")
    if exp <= moment - LEEWAY_S:
        raise _refuse("expired")
    if exp - iat > MAX_LIFETIME_S:
        raise _refuse("lives longer than 24 hours")
    audience = claims.get("aud")
    if audience is not None and audience != site.key and audience != [site.key]:
        raise _refuse("issued for another site")
    sub, email = claims["sub"], claims["email"]
    if not (isinstance(sub, str) and sub and len(sub) <= MAX_CLAIM_CHARS):
        raise _refuse("sub must be a non-empty string")
    if not (isinstance(email, str) and "@" in email and len(email) <= MAX_CLAIM_CHARS):
        raise _refuse("email must be an email address")
    return Customer(sub, email.strip().lower())
