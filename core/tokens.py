"""omero-user-token's token file, read and written without its process-exiting helpers.

The token is ``<session-key>@<host>:<port>`` in ``$OMERO_USER_TOKEN_DIR/token``
(default ``~/.omero_user_token/token``); the folder is private (0700) and this
module writes the file 0600. ``omero_user_token.getter()`` calls ``sys.exit`` on a
bad token, so library code never calls it.
"""

from __future__ import annotations

import os
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


def parse_token(text: str) -> Token:
    """Parse ``key@host:port``; raise ``AuthError`` (without echoing the key) when malformed."""
    key, at, where = text.strip().partition("@")
    host, colon, port_text = where.rpartition(":")
    if not (at and colon and key and host and port_text.isdigit()):
        raise AuthError(
            "The saved OMERO token is malformed.",
            hint="Save a new one with `cellprofiler-omero login --save-token`.",
        )
    return Token(key=key, host=host, port=int(port_text))


def read_token(configured_dir: str = "") -> Token | None:
    """The saved token, or ``None`` when there is none."""
    path = token_dir(configured_dir) / "token"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"Cannot read the OMERO token file {path}: {exc.strerror}.") from None
    if not text.strip():
        return None
    return parse_token(text)


def write_token(token: Token, configured_dir: str = "") -> Path:
    """Save ``token`` privately (folder 0700, file 0600) and return the file's path."""
    folder = token_dir(configured_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, stat.S_IRWXU)
    path = folder / "token"
    partial = folder / ".token.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token.serialize())
    os.chmod(partial, 0o600)
    partial.replace(path)
    return path


def remove_token(configured_dir: str = "", *, only_key: str | None = None) -> bool:
    """Delete the token file (when ``only_key`` is given, only if it holds that key)."""
    path = token_dir(configured_dir) / "token"
    if only_key is not None:
        try:
            current = parse_token(path.read_text())
        except (OSError, AuthError):
            return False
        if current.key != only_key:
            return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
