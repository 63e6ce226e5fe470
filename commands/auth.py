"""``login``, ``logout`` and ``whoami``: sessions for people at a terminal and for scripts.

A command-line process ends after each command, so a session outlives it only as an
omero-user-token (``login --save-token``), which this package, CellProfiler with the
OMERO plugins and omero-user-token itself all use.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from pathlib import Path

from cellprofiler_omero.commands import common
from cellprofiler_omero.commands.common import UsageError
from cellprofiler_omero.core.errors import AuthError, ServerError

PASSWORD_ENV = "OMERO_PASSWORD"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``login``, ``logout`` and ``whoami``."""
    login = sub.add_parser(
        "login", help="check a user name and password; with --save-token, stay logged in",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Log in to an OMERO server.\n\n"
                    "Without --save-token this only checks the credentials: a command-line "
                    "process\nends after each command, so nothing else can keep the "
                    "session. With\n--save-token the session is kept as an omero-user-token "
                    "that later commands,\nCellProfiler (with these plugins) and "
                    "omero-user-token all use, until it has\nbeen idle for "
                    "--time-to-idle; `cellprofiler-omero logout` ends it earlier.",
        epilog="password:\n"
               "  read without echo from the terminal, or, for scripts and cluster jobs, "
               "from\n  the environment variable $OMERO_PASSWORD (never give it on the "
               "command line).\n\n"
               "examples:\n"
               "  cellprofiler-omero login --server omero.example.org --user alice "
               "--save-token\n"
               "  OMERO_PASSWORD=... cellprofiler-omero login --user alice --save-token "
               "--time-to-idle 2h")
    common.add_server_options(login)
    login.add_argument("--user", metavar="NAME",
                       help="OMERO user name (asked for when missing and run in a terminal)")
    login.add_argument("--save-token", action="store_true",
                       help="keep the session as an omero-user-token (file readable only by "
                            "you) for later commands and CellProfiler")
    login.add_argument("--time-to-idle", metavar="DURATION", type=common.duration_minutes,
                       help="how long the saved session may stay unused, e.g. 90m, 2h, "
                            "600s or plain minutes (default: auth.token_time_to_idle_minutes, "
                            "100; the server may allow less)")
    login.set_defaults(handler=cmd_login)

    logout = sub.add_parser(
        "logout", help="end the saved token's session and delete the token",
        description="End the session held by the saved omero-user-token on its server and "
                    "delete the token file. Nothing to do (no token) is not an error.")
    logout.set_defaults(handler=cmd_logout)

    whoami = sub.add_parser(
        "whoami", help="show the server, user and group of the current session",
        description="Show which server, user and group commands would use, and how the "
                    "session was obtained (saved token, or handed over by a parent process "
                    "through $CELLPROFILER_OMERO_SESSION_FILE). The session key is never "
                    "shown. Exits non-zero when not logged in.")
    common.add_server_options(whoami)
    whoami.add_argument("--json", action="store_true", help="print JSON for programs")
    whoami.set_defaults(handler=cmd_whoami)


# -- login -----------------------------------------------------------------------------------


def _target(args: argparse.Namespace, token_dir: str, configured: tuple[str, int]
            ) -> tuple[str, int]:
    """Server to log in to: --server, else the settings, else the saved token's server."""
    from cellprofiler_omero.core import tokens

    host, port = configured
    if host:
        return host, port
    token = None
    # A malformed token names no server; fall through to the usage error.
    with contextlib.suppress(AuthError):
        token = tokens.read_token(token_dir)
    if token is not None:
        return token.host, args.port or token.port
    raise UsageError(
        "No OMERO server given.",
        hint="Pass --server HOST, or set server.host in the settings "
             "(or $CELLPROFILER_OMERO_SERVER_HOST).")


def _ask_user(where: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError("No user name given.", hint="Pass --user NAME.")
    # The prompt goes to stderr so that stdout stays free for what the command prints.
    print(f"OMERO user on {where}: ", end="", file=sys.stderr, flush=True)
    name = sys.stdin.readline().strip()
    if not name:
        raise UsageError("No user name given.", hint="Pass --user NAME.")
    return name


def _password(user: str, where: str) -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        # getpass would fall back to reading stdin with echo; refuse instead.
        raise UsageError(
            "No password: not running in a terminal.",
            hint=f"Set the environment variable {PASSWORD_ENV} for scripts.")
    return getpass.getpass(f"Password for {user} on {where}: ")


def cmd_login(args: argparse.Namespace) -> int:
    """Check credentials; with ``--save-token`` keep the session as a token."""
    from cellprofiler_omero.core import tokens

    settings = common.load(args)
    host, port = _target(args, settings.auth.token_dir,
                         (settings.server.host, settings.server.port))
    where = f"{host}:{port}"
    if args.save_token:
        tokens.check_writable(settings.auth.token_dir)
    user = args.user or _ask_user(where)
    password = _password(user, where)
    with common.session(args) as manager:
        info = common.connect(manager, args, host=host, port=port, user=user,
                              password=password, use_token=False)
        who = f"{info.user} (group {info.group})"
        if not args.save_token:
            print(f"Credentials accepted: {who} on {info.server}.")
            print("Nothing was saved, so other commands cannot use this login; run "
                  "`cellprofiler-omero login --save-token` to stay logged in.")
            return 0
        replaced = (tokens.token_dir(settings.auth.token_dir) / "token").exists()
        minutes = args.time_to_idle or settings.auth.token_time_to_idle_minutes
        path = common.run(manager.save_token, minutes)
        # Closing now ends the password session; the token's own session stays.
    print(f"Logged in: {who} on {info.server}.")
    previous = " (replacing the previous one)" if replaced else ""
    print(f"Saved an omero-user-token to {path}{previous}; it lasts until unused for "
          f"{common.format_minutes(minutes)} (or the server's limit, if lower).")
    print("Later commands and CellProfiler use it; `cellprofiler-omero logout` ends it.")
    return 0


# -- logout ----------------------------------------------------------------------------------


def cmd_logout(args: argparse.Namespace) -> int:
    """Kill the token's session on its server and delete the token file."""
    from cellprofiler_omero.core import tokens

    settings = common.load(args)
    folder = tokens.token_dir(settings.auth.token_dir)
    path = folder / "token"
    try:
        token = tokens.read_token(settings.auth.token_dir)
    except tokens.TokenFileError as exc:
        # A malformed token cannot be used or ended; deleting it is all there is to do
        # (a folder in its place is left for the user: it may hold anything).
        if path.is_dir():
            raise
        tokens.remove_token(settings.auth.token_dir)
        print(f"Deleted the unusable token file {path}: it {exc.reason}.")
        return 0
    if token is None:
        print(f"Not logged in: there is no saved token in {folder}.")
        return 0
    where = f"{token.host}:{token.port}"
    with common.session(args) as manager:
        try:
            # Joined by key (not as "token"), the session is killed on close, not detached.
            info = common.connect(manager, args, host=token.host, port=token.port,
                                  session_key=token.key)
            ended = f"Ended the session of {info.user} on {where}"
        except AuthError:
            ended = f"The token's session on {where} had already ended"
        except ServerError as exc:
            raise ServerError(exc.message, hint=f"The token was kept: try again later, or "
                              f"delete {path} to forget it.") from None
    removed = tokens.remove_token(settings.auth.token_dir, only_key=token.key)
    tail = f"deleted {path}." if removed else f"left {path}: it now holds another session."
    print(f"{ended}; {tail}")
    return 0


# -- whoami ----------------------------------------------------------------------------------


def _how(source: str, token_file: Path) -> str:
    from cellprofiler_omero.core.handoff import HANDOFF_ENV

    if source == "token":
        return f"saved omero-user-token ({token_file})"
    if source == "environment":
        return f"handed over by a parent process (${HANDOFF_ENV})"
    return source


def cmd_whoami(args: argparse.Namespace) -> int:
    """Who is logged in where, and how (never the key)."""
    from cellprofiler_omero.core import tokens

    with common.session(args) as manager:
        info = common.connect(manager, args)
        token_file = tokens.token_dir(manager.settings.auth.token_dir) / "token"
    if args.json:
        data: dict[str, object] = {
            "server": str(info.server), "host": info.server.host, "port": info.server.port,
            "user": info.user, "user_id": info.user_id, "group": info.group,
            "group_id": info.group_id, "admin": info.is_admin, "source": info.source}
        if info.source == "token":
            data["token_file"] = str(token_file)
        common.print_json(data)
        return 0
    admin = ", administrator" if info.is_admin else ""
    rows = [("server", str(info.server)),
            ("user", f"{info.user} (id {info.user_id}{admin})"),
            ("group", f"{info.group} (id {info.group_id})"),
            ("session", _how(info.source, token_file))]
    for label, value in rows:
        print(f"{label + ':':<9}{value}")
    return 0

