"""The store profile: one TOML file holding the facts the assistant states as the store's own.

The file is read once at start-up. A wrong profile stops the service with one line naming the
file, the field and the problem, because an assistant quoting a wrong returns window is worse
than one that does not start.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_PROFILE_PATH = Path(__file__).parent / "store" / "profile.toml"


class ProfileError(Exception):
    """The store profile is unreadable, or a field in it is missing or wrong."""


# Reads one field's value out of the parsed document, or raises ProfileError naming it.
Read = Callable[["_ProfileReader", str], Any]


def profile_field(key: str, read: Read) -> Any:
    """A field of StoreProfile held at the dotted `key` of the file and read by `read`."""
    return dataclasses.field(metadata={"key": key, "read": read})


def _text(reader: _ProfileReader, key: str) -> str:
    value = reader.lookup(key)
    if value is None:
        raise reader.fail(key, "is missing")
    if not isinstance(value, str):
        raise reader.fail(key, f"must be text, got {_shown(value)}")
    if not value.strip():
        raise reader.fail(key, "is empty")
    return value.strip()


def _optional_text(reader: _ProfileReader, key: str) -> str | None:
    if reader.lookup(key) is None:
        return None
    return _text(reader, key)


def _one_line(reader: _ProfileReader, key: str) -> str:
    # The tone is written as a multi-line TOML string; the prompt wants it as one sentence.
    return " ".join(_text(reader, key).split())


def _text_list(reader: _ProfileReader, key: str) -> tuple[str, ...]:
    value = reader.lookup(key)
    if value is None:
        raise reader.fail(key, "is missing")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise reader.fail(key, f'must be a list of text such as ["USA"], got {_shown(value)}')
    items = tuple(item.strip() for item in value if item.strip())
    if not items:
        raise reader.fail(key, "is empty")
    return items


def _positive_int(reader: _ProfileReader, key: str) -> int:
    value = reader.lookup(key)
    if value is None:
        raise reader.fail(key, "is missing")
    # bool is an int in Python, but `window_days = true` is a mistake, not 1 day.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise reader.fail(key, f"must be a whole number above 0, got {_shown(value)}")
    return value


def _time_zone(reader: _ProfileReader, key: str) -> str:
    name = _text(reader, key)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise reader.fail(
            key, f"must be an IANA time zone such as 'Asia/Kolkata', got {name!r}"
        ) from exc
    return name


def _email(reader: _ProfileReader, key: str) -> str:
    address = _text(reader, key)
    local, _, domain = address.partition("@")
    if not local or "." not in domain or " " in address:
        raise reader.fail(key, f"must be an email address, got {address!r}")
    return address


@dataclass(frozen=True)
class StoreProfile:
    """Each field is declared once: where the file holds it and how it is read and checked.
    The reader, the set of known keys and `profile_document` are all derived from these lines,
    and fields are checked in this order (the first wrong one is the one reported)."""

    name: str = profile_field("name", _text)
    description: str = profile_field("description", _text)
    website: str | None = profile_field("website", _optional_text)
    tone: str = profile_field("tone", _one_line)
    shipping_regions: tuple[str, ...] = profile_field("shipping.regions", _text_list)
    delivery_time: str = profile_field("shipping.delivery_time", _text)
    returns_window_days: int = profile_field("returns.window_days", _positive_int)
    support_hours: str = profile_field("support.hours", _text)
    time_zone: str = profile_field("support.time_zone", _time_zone)
    contact_email: str = profile_field("contact.email", _email)
    contact_phone: str | None = profile_field("contact.phone", _optional_text)

    @property
    def human_contact(self) -> str:
        """How a shopper reaches a person, as one phrase: "help@… or +91 …"."""
        if self.contact_phone:
            return f"{self.contact_email} or {self.contact_phone}"
        return self.contact_email


_FIELDS = dataclasses.fields(StoreProfile)
# Every key the file may hold; anything else is a typo that would otherwise be ignored silently.
_KNOWN_KEYS = frozenset(field.metadata["key"] for field in _FIELDS)


def load_profile(path: Path | str) -> StoreProfile:
    """Read and check the profile at `path`; raise ProfileError with a one-line reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"store profile {path}: cannot read the file ({exc.strerror})") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(f"store profile {path}: the file is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"store profile {path}: not valid TOML: {exc}") from exc
    return _ProfileReader(str(path), document).profile()


def profile_from_document(document: object, source: str) -> StoreProfile:
    """Check a profile held as a parsed document (a site's profile, stored as JSON) exactly as
    a TOML file is checked; `source` names it in the error ("store profile <source>: ...")."""
    if not isinstance(document, dict):
        raise ProfileError(f"store profile {source}: must be a table of fields")
    return _ProfileReader(source, document).profile()


def profile_document(profile: StoreProfile) -> dict[str, Any]:
    """The profile as the nested fields of its TOML file: what a site stores as JSON, and
    what profile_from_document reads back to the same profile."""
    document: dict[str, Any] = {}
    for field in _FIELDS:
        value = getattr(profile, field.name)
        if value is None:  # an optional field left out of the file
            continue
        *tables, leaf = field.metadata["key"].split(".")
        table = document
        for name in tables:
            table = table.setdefault(name, {})
        table[leaf] = list(value) if isinstance(value, tuple) else value
    return document


class _ProfileReader:
    """Reads typed fields out of the parsed TOML, failing on the first wrong one."""

    def __init__(self, source: str, document: dict[str, Any]) -> None:
        self.path = source
        self.document = document

    def profile(self) -> StoreProfile:
        for key in sorted(_dotted_keys(self.document)):
            if key not in _KNOWN_KEYS:
                raise self.fail(key, "is not a profile field (check the spelling)")
        return StoreProfile(**{field.name: field.metadata["read"](self, field.metadata["key"])
                               for field in _FIELDS})

    def fail(self, key: str, problem: str) -> ProfileError:
        return ProfileError(f"store profile {self.path}: field '{key}' {problem}")

    def lookup(self, key: str) -> Any:
        node: Any = self.document
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def _dotted_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _shown(value: object) -> str:
    """A short one-line rendering of a wrong value for an error message."""
    shown = repr(value).replace("\n", " ")
    return shown if len(shown) <= 60 else shown[:57] + "..."
