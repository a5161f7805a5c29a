"""Staff passwords: the policy (length, a list of common ones) and Argon2id hashing.

argon2-cffi's PasswordHasher defaults follow RFC 9106's second recommendation (Argon2id, 64 MiB,
3 passes); `needs_rehash` tells when a stored hash was made with other parameters, and sign-in
then stores a new one (app/staff.py).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # hashing a megabyte per sign-in attempt is a denial of service

# Passwords of 12 characters or more that lists of leaked passwords put near the top; a small
# list on purpose (a long one belongs in a file): these are the ones guessed first.
COMMON_PASSWORDS = frozenset({
    "123456789012", "1234567890123", "12345678910", "password1234", "password123!",
    "passwordpassword", "qwertyuiopasdfgh", "qwerty123456", "qwertyuiop12", "iloveyou1234",
    "111111111111", "000000000000", "aaaaaaaaaaaa", "abcdefghijkl", "abc123456789",
    "letmein12345", "welcome12345", "administrator", "changeme1234", "football1234",
    "baseball1234", "sunshine1234", "princess1234", "trustno11234", "monkey123456",
    "dragon123456", "superman1234", "1q2w3e4r5t6y", "zaq12wsxcde3", "qazwsxedcrfv",
    "passw0rd1234", "p@ssw0rd1234", "correcthorsebatterystaple", "supportsupport",
})


class PasswordRejected(ValueError):
    """A new password does not meet the policy; the message says why."""


def check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordRejected(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordRejected(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    if password.lower() in COMMON_PASSWORDS or len(set(password)) < 4:
        raise PasswordRejected("the password is too common; choose a longer, less usual one")
    return password


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the email is unknown, so a sign-in takes as long either way;
        # made on first use, so an app that nobody signs in to never pays for it.
        self._decoy: str | None = None

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        if len(password) > MAX_PASSWORD_CHARS:
            return False
        if self._decoy is None:
            self._decoy = self._hasher.hash("decoy password, never anyone's")
        try:
            return self._hasher.verify(stored_hash or self._decoy, password) and \
                stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
