"""Which credentials a login uses: a pure rule, shared by the session manager and the CLI.

In order: an explicit session key; an explicit user and password; a session handed
over by a parent process (``core.handoff``) for the very server wanted; the saved
omero-user-token when tokens are allowed **and** the token is for that server (host
and Ice port). A key is never sent to another server than the one it came from.
"""

from __future__ import annotations

from collections.abc import Callable

from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.handoff import Handoff
from cellprofiler_omero.core.roles import Credentials, ServerAddress
from cellprofiler_omero.core.tokens import Token

#: What to do when no credentials apply (the CLI and the CellProfiler plugin).
RECONNECT_HINT = (
    "Log in again: `cellprofiler-omero login --server HOST` (add --save-token to keep "
    "a token), or use Plugins ▸ Connect to OMERO in CellProfiler."
)


def token_serves(token: Token, address: ServerAddress) -> bool:
    """Whether ``token`` is for the server at ``address`` (same host and Ice port)."""
    return address.same_host(token.host) and token.port == address.port


def choose_credentials(
    address: ServerAddress,
    *,
    user: str | None = None,
    password: str | None = None,
    session_key: str | None = None,
    handoff: Callable[[], Handoff | None] = lambda: None,
    token: Callable[[], Token | None] = lambda: None,
    use_token: bool = True,
) -> Credentials:
    """The credentials to log in to ``address`` with, by the rule of this module.

    ``handoff`` and ``token`` return the parent's hand-off and the saved token; each
    is called only when the credentials before it in the order do not apply (so a
    malformed token file matters only when the token would be used). ``use_token`` is
    the ``auth.use_token`` setting (or the caller's override). ``Credentials.source``
    says which rule chose: ``session``, ``password``, ``environment`` or ``token``.
    Raises ``AuthError`` (saying how to log in) when none applies.
    """
    if session_key is not None:
        return Credentials(session_key=session_key, source="session")
    if user is not None and password is not None:
        return Credentials(user=user, password=password, source="password")
    handed = handoff()
    if handed is not None and handed.address == address:
        return Credentials(session_key=handed.key, source="environment")
    saved = token() if use_token else None
    if saved is not None and token_serves(saved, address):
        return Credentials(session_key=saved.key, source="token")
    raise AuthError(f"Not logged in to {address}.", hint=RECONNECT_HINT)
