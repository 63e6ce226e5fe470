"""omero-user-token's token file, read and written without its process-exiting helpers.

The token is ``<session-key>@<host>:<port>`` in ``$OMERO_USER_TOKEN_DIR/token``
(default ``~/.omero_user_token/token``); the folder is private (0700) and this
module writes the file 0600. ``omero_user_token.getter()`` calls ``sys.exit`` on a
bad token, so library code never calls it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cellprofiler_omero.core.errors import AuthError


@dataclass(frozen=True)
class Token:
    """A saved session: the key (secret, not in ``repr``), host and Ice port."""

    key: str = field(repr=False)
    host: str
    port: int

    def serialize(self) -> str:
        return f"{self.key}@{self.host}:{self.port}"


def token_dir(configured: str = "") -> Path:
    """The token folder: the setting, else ``$OMERO_USER_TOKEN_DIR``, else the default."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("OMERO_USER_TOKEN_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".omero_user_token"


#: A token is ``<uuid>@<host>:<port>``, well under this; anything longer is not a token
#: (and is not read whole: the file might be anything).
_MAX_TOKEN_BYTES = 4096
#: A key and a host are printable ASCII without spaces or ``@`` (omero-user-token splits
#: at the first ``@``); the port, after the last ``:``, has at most 5 digits (checked
#: before ``int()``, so no digit string can make it fail).
_TOKEN_TEXT = re.compile(r"(?P<key>[!-?A-~]+)@(?P<host>[!-?A-~]+):(?P<port>[0-9]{1,5})")

_FIX = ("Delete it with `cellprofiler-omero logout` (or by hand) and save a new one with "
        "`cellprofiler-omero login --save-token`.")


class TokenFileError(AuthError):
    """The saved token file cannot be used: unreadable, not a file, or not a token.

    ``path`` is the file, ``reason`` what is wrong with it (never its content: it may
    hold a session key).
    """

    def __init__(self, path: Path | None, reason: str, *, hint: str = _FIX) -> None:
        where = f"The saved OMERO token file {path}" if path else "The saved OMERO token"
        super().__init__(f"{where} {reason}.", hint=hint)
        self.path = path
        self.reason = reason


def parse_token(text: str, path: Path | None = None) -> Token:
    """Parse ``key@host:port``; raise ``TokenFileError`` (an ``AuthError``, never echoing
    the key) when malformed. ``path`` names the file in the message."""
    match = _TOKEN_TEXT.fullmatch(text.strip())
    port = int(match.group("port")) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise TokenFileError(path, "is malformed (not <session-key>@<host>:<port>)")
    return Token(key=match.group("key"), host=match.group("host"), port=port)


def _read_text(path: Path) -> str | None:
    """The token file's text; ``None`` when there is none; ``TokenFileError`` otherwise.

    Opened without blocking and checked to be a regular file, so a folder, a FIFO or
    a device in its place fails with a clear message instead of hanging or raising.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})",
                             hint=f"Make it readable by you, or delete it. {_FIX}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise TokenFileError(path, "is a folder, not a file",
                                 hint=f"Remove the folder {path}, then save a token with "
                                      "`cellprofiler-omero login --save-token`.")
        if not stat.S_ISREG(mode):
            raise TokenFileError(path, "is not a regular file")
        data = os.read(fd, _MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(path, f"cannot be read ({exc.strerror or type(exc).__name__})"
                             ) from None
    finally:
        os.close(fd)
    if len(data) > _MAX_TOKEN_BYTES:
        raise TokenFileError(path, f"is too large to be a token (over {_MAX_TOKEN_BYTES} "
                                   "bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenFileError(path, "is not a token (not UTF-8 text)") from None


def read_token(configured_dir: str = "") -> Token | None:
    """The saved token, or ``None`` when there is none (no file, or an empty one).

    A file that is there but cannot be used raises ``TokenFileError`` naming it: the
    user expects to be logged in, so it is not silently taken for "no token".
    """
    path = token_dir(configured_dir) / "token"
    text = _read_text(path)
    if text is None or not text.strip():
        return None
    return parse_token(text, path)


def check_writable(configured_dir: str = "") -> None:
    """Raise ``TokenFileError`` when a token clearly cannot be saved (a folder in the
    token file's place), so a login can refuse before it makes a session on the server."""
    path = token_dir(configured_dir) / "token"
    if path.is_dir():
        raise TokenFileError(path, "is a folder, so no token can be saved there",
                             hint=f"Remove the folder {path} and log in again.")


def write_token(token: Token, configured_dir: str = "") -> Path:
    """Save ``token`` privately (folder 0700, file 0600) and return the file's path.

    Raises ``TokenFileError`` when the folder or file cannot be written (nothing is
    left half-written: the token is written beside it and renamed into place).
    """
    check_writable(configured_dir)
    folder = token_dir(configured_dir)
    path = folder / "token"
    partial = folder / ".token.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, stat.S_IRWXU)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token.serialize())
        os.chmod(partial, 0o600)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise TokenFileError(
            path, f"cannot be written ({exc.strerror or type(exc).__name__})",
            hint=f"Make {folder} writable by you, or choose another folder with "
                 "auth.token_dir (or $OMERO_USER_TOKEN_DIR).") from None
    return path


def remove_token(configured_dir: str = "", *, only_key: str | None = None) -> bool:
    """Delete the token file (when ``only_key`` is given, only if it holds that key).

    Raises ``TokenFileError`` when the file is there but cannot be deleted.
    """
    path = token_dir(configured_dir) / "token"
    if only_key is not None:
        try:
            current = read_token(configured_dir)
        except AuthError:
            return False
        if current is None or current.key != only_key:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        what = "is a folder" if path.is_dir() else "cannot be deleted"
        raise TokenFileError(path, f"{what} ({exc.strerror or type(exc).__name__})",
                             hint=f"Delete {path} yourself.") from None
    return True
