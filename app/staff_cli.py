"""`python -m app staff ...`: create, list, disable staff accounts and reset their passwords.

The password is read from standard input (one line; never from the command line, where other
users of the machine and the shell's history would see it). A mistake is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TextIO

from psycopg_pool import AsyncConnectionPool

from .passwords import PasswordRejected, Passwords, check_new_password
from .sites import SiteError, SiteStore
from .staff import ROLES, StaffError, StaffStore

USAGE = ("use: python -m app staff create --site KEY --email E --name N --role owner|agent"
         " (password on stdin) | list | disable EMAIL | reset-password EMAIL (password on stdin)")


class CommandError(Exception):
    """The command line is wrong: one line for the operator."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m app staff", add_help=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    create = commands.add_parser("create", add_help=False)
    create.add_argument("--site", action="append", required=True, metavar="KEY")
    create.add_argument("--email", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    commands.add_parser("list", add_help=False)
    disable = commands.add_parser("disable", add_help=False)
    disable.add_argument("email")
    reset = commands.add_parser("reset-password", add_help=False)
    reset.add_argument("email")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def read_password(stdin: TextIO) -> str:
    if stdin.isatty():
        import getpass

        return check_new_password(getpass.getpass("Password: "))
    return check_new_password(stdin.readline().rstrip("\r\n"))


async def run(pool: AsyncConnectionPool, args: argparse.Namespace, stdin: TextIO,
              out: Callable[[str], None], passwords: Passwords | None = None) -> None:
    store = StaffStore(pool)
    if args.command == "list":
        keys = {record.id: record.site_key for record in await SiteStore(pool).all()}
        for member in await store.members():
            sites = ",".join(keys.get(site_id, str(site_id)) for site_id in member.site_ids)
            out(f"{member.email}\t{member.display_name}\t{member.role}\t{sites or '-'}"
                + ("\tdisabled" if member.disabled else ""))
        return
    if args.command == "disable":
        await store.set_disabled(args.email)
        out(f"disabled {args.email}; its sessions have ended")
        return
    hasher = passwords or Passwords()
    if args.command == "reset-password":
        if await store.member(args.email) is None:
            raise StaffError(f"there is no account for {args.email}")
        await store.set_password_hash(args.email, hasher.hash(read_password(stdin)))
        out(f"new password for {args.email}; its sessions have ended")
        return
    assert args.command == "create"
    site_store = SiteStore(pool)
    site_ids = [(await site_store.find(key)).id for key in args.site]
    name = args.name.strip()
    if not name:
        raise StaffError("give a --name")
    email = args.email.strip()
    member = await store.create(email, name, args.role, hasher.hash(read_password(stdin)),
                                site_ids)
    out(f"created {member.role} {member.email} ({member.display_name})")


async def run_command(open_pool: Callable[[], Awaitable[AsyncConnectionPool]],
                      args: argparse.Namespace) -> int:
    pool = await open_pool()
    try:
        await run(pool, args, sys.stdin, print)
    except (StaffError, SiteError, PasswordRejected) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await pool.close()
    return 0
