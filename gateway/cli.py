"""Argument parsing and the subcommands; the work itself lives in the modules they call."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.config import Config, ConfigError, config_path, load_config
from gateway.serve.server import configure_logging, routes_table, serve, table

if TYPE_CHECKING:
    from gateway.sources.file import UserRecord


class Failure(Exception):
    """A refused or failed command: exit 1 with this one-line reason."""


def _load(args: argparse.Namespace, *, require_upstream: bool = True) -> Config:
    return load_config(config_path(args.config), require_upstream=require_upstream)


# -- check / run / demo -----------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{config.source}: ok, {len(config.routes)} route(s)")
    print(routes_table(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise Failure("--workers must be at least 1")
    serve(_load(args), args.workers)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.runner import run_demo

    return run_demo(args.config)


def cmd_explain(args: argparse.Namespace) -> int:
    """Print the route and the rule that decide METHOD URL for a caller, and why."""
    from gateway.core.explain import describe, explain

    config = _load(args, require_upstream=False)
    roles = tuple(r for r in (args.roles or "").split(",") if r.strip())
    found = explain(
        config, args.method.upper(), args.url, args.user, roles, args.client or "", args.mfa
    )
    caller = f"{args.user} (roles: {','.join(roles) or '-'})" if args.user else "not signed in"
    request = f"{args.method.upper()} {args.url}" + (f" -> {found.path}" if found.path else "")
    rows = [
        ["request", request],
        ["caller", caller + (f" from {args.client}" if args.client else "")],
        ["route", describe(found.route) if found.route else "-"],
        ["rule", found.rule],
        ["verdict", found.verdict],
    ]
    print(table(rows))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of gateway.toml, generated from the config model, for editors."""
    from gateway.config.schema import schema_json

    sys.stdout.write(schema_json())
    return 0


# -- users ------------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        if not sys.stdin.isatty():
            raise Failure("no terminal to prompt on; use --password-stdin")
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            raise Failure("the passwords do not match")
    if not password:
        raise Failure("the password must not be empty")
    return password


def _roles(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(r.strip() for r in value.split(",") if r.strip())


def cmd_users(args: argparse.Namespace) -> int:
    from gateway.sources.base import canonical_username
    from gateway.sources.file import (
        UsersFileError,
        read_users,
        remove_user,
        set_disabled,
        set_user,
    )

    # users, keys and sessions need no upstream: a middleware config works too
    config = _load(args, require_upstream=False)
    if config.auth.users != "file":
        # the gateway never writes to another source: the operator's own tools manage it
        where = {
            "sql": "in the SQL database",
            "htpasswd": "in the htpasswd file (htpasswd -B)",
            "ldap": "in the directory",
        }
        raise Failure(
            f"users are managed {where.get(config.auth.users, 'elsewhere')} "
            f'(auth.users = "{config.auth.users}"); this command edits auth.users_file only'
        )
    path = config.auth.users_file
    try:
        if args.users_command == "list":
            users = read_users(path)
            rows = [["USER", "ROLES", "STATE"]] + [
                [name, ",".join(users[name].roles) or "-", _user_state(users[name])]
                for name in sorted(users)
            ]
            print(table(rows))
        elif args.users_command == "add":
            if canonical_username(args.name) in read_users(path):
                raise Failure(f"user {args.name!r} exists; use `gateway users passwd`")
            record = set_user(path, args.name, _password(args), _roles(args.roles) or ())
            print(f"added {record.name} (roles: {','.join(record.roles) or '-'}) to {path}")
        elif args.users_command == "passwd":
            if canonical_username(args.name) not in read_users(path):
                raise Failure(f"no user {args.name!r}")
            record = set_user(path, args.name, _password(args), _roles(args.roles))
            print(f"changed the password of {record.name}")
            _audit(config, "password.changed", user=record.name, by="cli")
            # as a change on the account page does: a session taken with the old password
            # (or stolen) must not outlive the reset
            _end_sessions(config, record.name, "password_changed")
        elif args.users_command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name}")
            _audit(config, "user.removed", user=canonical_username(args.name), by="cli")
            _end_sessions(config, canonical_username(args.name))
        elif args.users_command == "disable":
            record = set_disabled(path, args.name, True)
            print(f"disabled {record.name}")
            _audit(config, "user.disabled", user=record.name, by="cli")
            _end_sessions(config, record.name)
        elif args.users_command == "enable":
            record = set_disabled(path, args.name, False)
            print(f"enabled {record.name}")
            _audit(config, "user.enabled", user=record.name, by="cli")
    except UsersFileError as exc:
        raise Failure(str(exc)) from None
    return 0


def _user_state(record: UserRecord) -> str:
    return "disabled" if record.disabled else ""


def _end_sessions(config: Config, user: str, reason: str = "user changed") -> None:
    """Revoke every session of a removed or disabled user, or of one whose password changed,
    so no replica waits for a refresh."""
    from gateway.store import open_store
    from gateway.store.base import StoreUnavailable

    async def work() -> int:
        store = open_store(config.store.url, config.base_dir)
        try:
            return await store.revoke_user_sessions(user)
        finally:
            await store.close()

    try:
        count = asyncio.run(work())
    except StoreUnavailable as exc:
        if reason == "password_changed":
            # the user still signs in: no refresh ends these sessions by itself
            raise Failure(
                f"store unavailable: {exc}; the password is changed but {user}'s sessions "
                f"go on: run `gateway sessions revoke {user}` once the store is back"
            ) from None
        raise Failure(
            f"store unavailable: {exc}; {user}'s sessions end at their next refresh"
        ) from None
    print(f"revoked {count} session(s) of {user}")
    _audit(config, "session.revoked", user=user, count=count, reason=reason, by="cli")


def _audit(config: Config, name: str, **fields: object) -> None:
    """An audit event from the CLI, to the file the config names (or the log)."""
    from gateway import audit

    audit.configure(config.audit.file)
    audit.event(name, **fields)


# -- keys -------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.auth.keys import (
        ACTIVATE_AFTER,
        KeyFileError,
        active_key,
        load_keys,
        retire_key,
        write_key,
    )

    if args.keys_command == "secret":
        # 32 random bytes, URL-safe base64: 256 bits, and nothing a TOML string must escape
        print(secrets.token_urlsafe(32))
        return 0
    config = _load(args, require_upstream=False)
    if config.keys.algorithm == "HS256":
        raise Failure("HS256 uses keys.secret; rotate it by changing the secret")
    directory = config.keys.dir
    try:
        if args.keys_command == "list":
            keys = [k for k in load_keys(directory) if k.algorithm == config.keys.algorithm]
            rows = [["KID", "ALGORITHM", "STATE"]]
            active = active_key(keys, time.time()).kid if keys else None
            passed = False
            for key in keys:
                state = "active (signs)" if key.kid == active else "verifies"
                if passed:
                    state = "next (verifies; signs once it is 10s old)"
                passed = passed or key.kid == active
                rows.append([key.kid, key.algorithm, state])
            print(table(rows))
        elif args.keys_command == "rotate":
            kid = write_key(directory, config.keys.algorithm)
            _audit(config, "key.rotated", kid=kid, algorithm=config.keys.algorithm, by="cli")
            print(
                f"new key {kid}: verifies now, signs in {ACTIVATE_AFTER:.0f}s; "
                "earlier keys keep verifying until retired"
            )
        elif args.keys_command == "retire":
            retire_key(directory, args.kid)
            print(f"retired {args.kid}")
            _audit(config, "key.retired", kid=args.kid, by="cli")
    except KeyFileError as exc:
        raise Failure(str(exc)) from None
    return 0


# -- sessions ---------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    from gateway.store import open_store
    from gateway.store.base import StoreUnavailable

    config = _load(args, require_upstream=False)

    async def work() -> int:
        store = open_store(config.store.url, config.base_dir)
        try:
            if args.sessions_command == "list":
                sessions = await store.list_sessions(args.user, time.time())
                rows = [["SID", "CREATED", "LAST SEEN", "STATE"]]
                for s in sorted(sessions, key=lambda s: s.created):
                    rows.append([s.sid, _when(s.created), _when(s.last_seen), _state(s)])
                print(table(rows))
            else:
                target = args.target
                found = await store.get_session(target)
                if found is not None:
                    await store.revoke_session(target)
                    print(f"revoked session {target}")
                    _audit(config, "session.revoked", user=found.user, session=target, by="cli")
                else:
                    count = await store.revoke_user_sessions(target)
                    print(f"revoked {count} session(s) of {target}")
                    _audit(config, "session.revoked", user=target, count=count, by="cli")
        except StoreUnavailable as exc:
            raise Failure(f"store unavailable: {exc}") from None
        finally:
            await store.close()
        return 0

    return asyncio.run(work())


def _printable(text: str) -> str:
    """`text` with what does not print (a terminal's escape sequences, say in a factor name
    kept before names were cleaned) shown escaped, as repr() shows it."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _state(session) -> str:
    return "revoked" if session.revoked else "active"


# -- service tokens ---------------------------------------------------------------------


def cmd_mfa(args: argparse.Namespace) -> int:
    from gateway import audit
    from gateway.auth.sealed import Sealer
    from gateway.mfa.factors import Factors
    from gateway.sources.base import canonical_username
    from gateway.store import open_store
    from gateway.store.base import StoreUnavailable

    config = _load(args, require_upstream=False)
    audit.configure(config.audit.file)

    async def work() -> int:
        store = open_store(config.store.url, config.base_dir)
        factors = Factors(store, Sealer(config.keys.dir), time.time)
        try:
            user = args.user
            found = await factors.list(user)
            # a password user's id is the canonical spelling of the name ("Alice" -> "alice")
            if not found and canonical_username(user) != user:
                user = canonical_username(user)
                found = await factors.list(user)
            left = await factors.recovery_left(user)
            if args.mfa_command == "list":
                if not found:
                    print(f"user {user!r} has no second factor")
                    return 0
                rows = [["KIND", "NAME", "ID", "ADDED", "LAST USED"]]
                for f in found:
                    rows.append(
                        [
                            f.kind,
                            _printable(f.name),
                            f.id,
                            _when(f.created),
                            "never" if f.last_used is None else _when(f.last_used),
                        ]
                    )
                print(table(rows))
                print(f"recovery codes left: {left}")
                return 0
            removed = await factors.reset(user)
            ended = await store.revoke_user_sessions(user)
            audit.event("mfa.reset", user=user, factors=removed, sessions_ended=ended, by="cli")
            print(
                f"removed {removed} second factor(s) and {left} recovery code(s) of {user!r}; "
                f"ended {ended} session(s): the next sign-in sets up a new factor"
            )
            return 0
        except StoreUnavailable as exc:
            raise Failure(f"store unavailable: {exc}") from None
        finally:
            await store.close()

    return asyncio.run(work())


def cmd_tokens(args: argparse.Namespace) -> int:
    from gateway import audit
    from gateway.auth.servicetokens import ServiceTokenError, ServiceTokens, check_roles
    from gateway.config.values import positive_duration
    from gateway.store import open_store
    from gateway.store.base import StoreUnavailable

    config = _load(args, require_upstream=False)
    audit.configure(config.audit.file)
    lifetime: float | None = None
    roles: tuple[str, ...] = ()
    if args.tokens_command == "create":
        if args.expires not in (None, "never"):
            try:
                lifetime = positive_duration(args.expires)
            except ValueError as exc:
                raise Failure(f"--expires {args.expires!r}: {exc}") from None
        try:
            roles = check_roles([r.strip() for r in (args.roles or "").split(",") if r.strip()])
        except ServiceTokenError as exc:
            raise Failure(str(exc)) from None

    async def work() -> int:
        store = open_store(config.store.url, config.base_dir)
        tokens = ServiceTokens(store, time.time)
        try:
            if args.tokens_command == "create":
                token, record = await tokens.create(args.name, roles, lifetime)
                until = "never (until revoked)" if record.expires is None else _when(record.expires)
                print(
                    f"service {record.name}: id {record.identity_id!r}, roles "
                    f"{','.join(record.roles) or '-'}, expires {until}",
                    file=sys.stderr,
                )
                print("the token (shown this once; only its hash is stored):", file=sys.stderr)
                print(token)
            elif args.tokens_command == "list":
                rows = [["NAME", "ID", "ROLES", "CREATED", "EXPIRES", "LAST USED"]]
                for t in await tokens.list():
                    rows.append(
                        [
                            t.name,
                            t.identity_id,
                            ",".join(t.roles) or "-",
                            _when(t.created),
                            "never" if t.expires is None else _when(t.expires),
                            "never" if t.last_used is None else _when(t.last_used),
                        ]
                    )
                print(table(rows))
            else:
                if not await tokens.revoke(args.name):
                    raise Failure(f"service {args.name!r} has no token")
                print(f"revoked the token of service {args.name}")
        except ServiceTokenError as exc:
            raise Failure(str(exc)) from None
        except StoreUnavailable as exc:
            raise Failure(f"store unavailable: {exc}") from None
        finally:
            await store.close()
        return 0

    return asyncio.run(work())


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `gateway` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        help="config file (default: $GATEWAY_CONFIG, else ./gateway.toml)",
    )
    parser = argparse.ArgumentParser(prog="gateway", description="Authenticating reverse proxy.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="serve the gateway")
    run.add_argument("--workers", type=int, default=1)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", parents=[common], help="validate the config, print routes")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", parents=[common], help="gateway + demo apps + demo user")
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser(
        "explain", parents=[common], help="which route and rule decide a request, and why"
    )
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL", help="https://host/path or /path")
    explain.add_argument("--user", help="signed in as this user (default: not signed in)")
    explain.add_argument("--roles", help="that user's roles, comma-separated")
    explain.add_argument("--from", dest="client", metavar="IP", help="the client address")
    explain.add_argument(
        "--mfa", action="store_true", help="that user signed in with a second factor too"
    )
    explain.set_defaults(func=cmd_explain)

    # no -c: the schema is the model's, the same whatever a config file holds
    schema = sub.add_parser("schema", help="print the JSON Schema of gateway.toml (for editors)")
    schema.set_defaults(func=cmd_schema)

    users = sub.add_parser("users", help="manage the users file")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", parents=[common])
    add.add_argument("name")
    add.add_argument("--roles", help="comma-separated roles")
    add.add_argument("--password-stdin", action="store_true")
    passwd = users_sub.add_parser(
        "passwd", parents=[common], help="set a new password; ends sessions"
    )
    passwd.add_argument("name")
    passwd.add_argument("--roles", help="replace the roles too")
    passwd.add_argument("--password-stdin", action="store_true")
    remove = users_sub.add_parser("remove", parents=[common], help="ends sessions")
    remove.add_argument("name")
    disable = users_sub.add_parser("disable", parents=[common], help="no sign-in; ends sessions")
    disable.add_argument("name")
    enable = users_sub.add_parser("enable", parents=[common])
    enable.add_argument("name")
    users_sub.add_parser("list", parents=[common])
    users.set_defaults(func=cmd_users)

    keys = sub.add_parser("keys", help="signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("rotate", parents=[common])
    keys_sub.add_parser("list", parents=[common])
    keys_sub.add_parser("secret", help="print a strong HS256 secret for keys.secret")
    retire = keys_sub.add_parser("retire", parents=[common])
    retire.add_argument("kid")
    keys.set_defaults(func=cmd_keys)

    sessions = sub.add_parser("sessions", help="list or revoke sessions")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    slist = sessions_sub.add_parser("list", parents=[common])
    slist.add_argument("user")
    revoke = sessions_sub.add_parser("revoke", parents=[common])
    revoke.add_argument("target", metavar="USER|SID")
    sessions.set_defaults(func=cmd_sessions)

    tokens = sub.add_parser("tokens", help="API tokens of service accounts")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", parents=[common], help="print a new token once")
    create.add_argument("name")
    create.add_argument("--roles", help="comma-separated roles")
    create.add_argument("--expires", help='lifetime, e.g. "90d" (default: until revoked)')
    tokens_sub.add_parser("list", parents=[common], help="every token's roles and last use")
    trevoke = tokens_sub.add_parser("revoke", parents=[common], help="end it on every replica")
    trevoke.add_argument("name")
    tokens.set_defaults(func=cmd_tokens)
    mfa = sub.add_parser("mfa", help="users' second factors")
    mfa_sub = mfa.add_subparsers(dest="mfa_command", required=True)
    mlist = mfa_sub.add_parser("list", parents=[common], help="a user's factors and codes left")
    mlist.add_argument("user", metavar="USER")
    mreset = mfa_sub.add_parser(
        "reset", parents=[common], help="remove every factor of a user and end their sessions"
    )
    mreset.add_argument("user", metavar="USER")
    mfa.set_defaults(func=cmd_mfa)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(exc.errors)} error(s) in the config", file=sys.stderr)
        return 1
    except Failure as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
