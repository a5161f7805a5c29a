"""`python -m app sites ...`: create, list, show and update sites, and sync a site's knowledge.

Every mistake (a bad origin, a wrong profile field, an unknown key) is one line on stderr and
exit status 2; `sites create` prints the new key alone on the last line of stdout, for scripts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from psycopg_pool import AsyncConnectionPool

from .knowledge import KnowledgeError, read_articles, sync_knowledge
from .sites import (
    SiteError,
    SiteRecord,
    SiteStore,
    check_name,
    check_number,
    check_origin,
    check_rate,
    check_whole,
    site_from_record,
    sites_from_records,
)
from .store_profile import ProfileError, StoreProfile, load_profile

USAGE = ("use: python -m app sites create --name NAME --origin URL [--profile FILE]"
         " [--knowledge DIR] | list | show KEY | update KEY [options] | knowledge sync KEY DIR")


class CommandError(Exception):
    """The command line is wrong: one line for the operator."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block) and becomes a CommandError."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(message)


def _override_options(parser: argparse.ArgumentParser) -> None:
    """The settings a site may override; an empty value returns to the deployment's."""
    parser.add_argument("--rate-limit-chat-ip", metavar="RATE")
    parser.add_argument("--rate-limit-chat-ip-daily", metavar="RATE")
    parser.add_argument("--rate-limit-session", metavar="RATE")
    parser.add_argument("--daily-token-budget", metavar="TOKENS")
    parser.add_argument("--model")
    parser.add_argument("--temperature")
    parser.add_argument("--max-tokens", metavar="TOKENS")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m app sites", add_help=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    create = commands.add_parser("create", add_help=False)
    create.add_argument("--name", required=True)
    create.add_argument("--origin", action="append", default=[], metavar="URL")
    create.add_argument("--profile", metavar="FILE")
    create.add_argument("--knowledge", metavar="DIR")
    _override_options(create)
    commands.add_parser("list", add_help=False)
    show = commands.add_parser("show", add_help=False)
    show.add_argument("key")
    update = commands.add_parser("update", add_help=False)
    update.add_argument("key")
    update.add_argument("--name")
    update.add_argument("--origin", action="append", metavar="URL",
                        help="the new list of origins (repeat the option); replaces the old one")
    update.add_argument("--profile", metavar="FILE")
    _override_options(update)
    knowledge = commands.add_parser("knowledge", add_help=False)
    knowledge_commands = knowledge.add_subparsers(dest="knowledge_command", required=True,
                                                  parser_class=_Parser)
    sync = knowledge_commands.add_parser("sync", add_help=False)
    sync.add_argument("key")
    sync.add_argument("dir")
    return parser


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The override options given, checked; an empty value is None (the deployment's)."""
    checks: dict[str, Callable[[str], Any]] = {
        "rate_limit_chat_ip": lambda raw: check_rate("--rate-limit-chat-ip", raw),
        "rate_limit_chat_ip_daily": lambda raw: check_rate("--rate-limit-chat-ip-daily", raw),
        "rate_limit_session": lambda raw: check_rate("--rate-limit-session", raw),
        "daily_token_budget": lambda raw: check_whole("--daily-token-budget", raw,
                                                      low=0, high=10**12),
        "model": lambda raw: raw.strip(),
        "temperature": lambda raw: check_number("--temperature", raw, low=0, high=2),
        "max_tokens": lambda raw: check_whole("--max-tokens", raw, low=1, high=100_000),
    }
    values: dict[str, Any] = {}
    for name, check in checks.items():
        raw = getattr(args, name)
        if raw is not None:
            values[name] = check(raw) if raw.strip() else None
    return values


def read_profile(path: str) -> StoreProfile:
    return load_profile(Path(path))


def knowledge_folder(raw: str) -> Path:
    folder = Path(raw)
    read_articles(folder)  # every article readable before anything is written
    return folder.resolve()


def describe(record: SiteRecord, default_profile: StoreProfile | None) -> list[str]:
    site = site_from_record(record, default_profile)
    inherited = "(the deployment's)"
    lines = [
        f"key: {site.key}",
        f"name: {site.name}" + (" (default site)" if site.is_default else ""),
        f"origins: {' '.join(site.allowed_origins) or '(none)'}",
        f"profile: {site.profile.name}" + ("" if site.own_profile or site.is_default
                                           else " (the default site's)"),
        f"knowledge: {site.knowledge_dir or '(none)'}",
    ]
    for label, value in (("rate limit chat ip", site.rate_limit_chat_ip),
                         ("rate limit chat ip daily", site.rate_limit_chat_ip_daily),
                         ("rate limit session", site.rate_limit_session),
                         ("daily token budget", site.daily_token_budget),
                         ("model", site.model), ("temperature", site.temperature),
                         ("max tokens", site.max_tokens)):
        lines.append(f"{label}: {inherited if value is None else value}")
    lines += [f"created: {record.created_at.isoformat()}",
              f"updated: {record.updated_at.isoformat()}"]
    return lines


async def _default_profile(store: SiteStore) -> StoreProfile:
    return sites_from_records(await store.all())[0].profile


async def run(pool: AsyncConnectionPool, args: argparse.Namespace,
              out: Callable[[str], None]) -> None:
    store = SiteStore(pool)
    if args.command == "list":
        for site in sites_from_records(await store.all()):
            origins = ",".join(site.allowed_origins) or "-"
            out(f"{site.key}\t{site.name}\t{origins}" + ("\tdefault" if site.is_default else ""))
        return
    if args.command == "show":
        out("\n".join(describe(await store.find(args.key), await _default_profile(store))))
        return
    if args.command == "knowledge":
        record = await store.find(args.key)
        if record.id == 1:
            raise SiteError("the default site's articles come from KNOWLEDGE_DIR, synced at "
                            "every start; use `python -m app knowledge sync`")
        folder = knowledge_folder(args.dir)
        report = await sync_knowledge(pool, folder, record.id)
        await store.update(args.key, {"knowledge_dir": str(folder)})
        out(f"knowledge base {folder} for site {record.site_key}: {report.summary()}")
        return
    values = overrides(args)
    if args.name is not None:
        values["name"] = check_name(args.name)
    if args.origin is not None:
        values["allowed_origins"] = [check_origin(origin) for origin in args.origin]
    if args.profile is not None:
        values["profile"] = read_profile(args.profile)
    if args.command == "create":
        if not values.get("allowed_origins"):
            raise SiteError("give at least one --origin, e.g. --origin https://shop.example.com")
        articles = knowledge_folder(args.knowledge) if args.knowledge else None
        profile = values.pop("profile", None)
        record = await store.create(values.pop("name"), values.pop("allowed_origins"), profile,
                                    **values)
        if articles is not None:
            report = await sync_knowledge(pool, articles, record.id)
            record = await store.update(record.site_key, {"knowledge_dir": str(articles)})
            out(f"knowledge base {articles}: {report.summary()}")
        out("\n".join(describe(record, await _default_profile(store))))
        out(record.site_key)
        return
    assert args.command == "update"
    current = await store.find(args.key)
    if current.id == 1 and ({"allowed_origins", "profile"} & set(values)):
        raise SiteError("the default site's origins and profile follow ALLOWED_ORIGINS and "
                        "STORE_PROFILE; change those instead")
    record = await store.update(args.key, values)
    out("\n".join(describe(record, await _default_profile(store))))


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


async def run_command(open_pool: Callable[[], Awaitable[AsyncConnectionPool]],
                      args: argparse.Namespace) -> int:
    """Run a parsed command; a mistake is one line on stderr and status 2."""
    pool = await open_pool()
    try:
        await run(pool, args, print)
    except (SiteError, ProfileError, KnowledgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await pool.close()
    return 0
