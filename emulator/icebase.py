"""Servants from omero-py's slice-generated skeletons that always answer.

``@servant(Skeleton)`` turns a class of plain Python methods into an Ice servant:
every operation of the interface is dispatched (AMD ones included, whose generated
``op_async`` would otherwise never answer), unimplemented operations raise
``omero.ApiUsageException`` naming them at once, unexpected Python errors become
``omero.InternalException``, and each call first passes the fault injector and the
session check. Every call is counted (``arrive``, from the servant locator) and, under a
network profile, waits its round trip and the transfer of its request and reply bytes
(``network.Network``).
"""

from __future__ import annotations

import ast
import functools
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import Ice
import omero

from cellprofiler_omero.emulator.network import ice_reply_size, ice_request_size

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context

log = logging.getLogger(__name__)


@functools.cache
def _result_counts() -> dict[tuple[str, str], int]:
    """``(interface, op) → number of results`` (return value + out parameters).

    Read from the slice-generated ``*_ice.py`` files, because an AMD callback must be
    answered with exactly that many values: ``ice_response()`` for an operation that
    returns a value crashes the interpreter inside IcePy.
    """
    import omero as omero_pkg

    folders = {Path(Ice.__file__).parent, Path(omero_pkg.__file__).parent.parent}
    pattern = re.compile(r"^\s*(?:_M_[\w.]+\.)?(\w+)\._op_(\w+) = IcePy\.Operation\(")
    counts: dict[tuple[str, str], int] = {}
    for folder in folders:
        for path in folder.glob("*_ice.py"):
            for line in path.read_text(errors="replace").splitlines():
                match = pattern.match(line)
                if not match:
                    continue
                call = ast.parse(line.strip()).body[0]
                assert isinstance(call, ast.Assign) and isinstance(call.value, ast.Call)
                args = call.value.args
                outs, returns = args[7], args[8]
                n_out = len(outs.elts) if isinstance(outs, ast.Tuple) else 0
                has_return = not (isinstance(returns, ast.Constant) and returns.value is None)
                counts[(match.group(1), match.group(2))] = n_out + int(has_return)
    return counts


def operations(skeleton: type) -> dict[str, tuple[bool, int]]:
    """Operation names of a generated skeleton (with bases) → (AMD?, number of results)."""
    counts = _result_counts()
    ops: dict[str, tuple[bool, int]] = {}
    for attr in dir(skeleton):
        if not attr.startswith("_op_") or attr.startswith("_op_ice_"):
            continue
        name = attr[4:]
        n_results = next((counts[(k.__name__, name)] for k in skeleton.__mro__
                          if (k.__name__, name) in counts), None)
        if n_results is None:
            raise RuntimeError(f"No generated signature for {skeleton.__name__}.{name}")
        ops[name] = (hasattr(skeleton, name + "_async"), n_results)
    return ops


#: What a real server puts in ``serverExceptionClass``: omero-blitz's ``IceMapper.
#: handleException`` maps the services' ``ome.conditions.*`` (and ``ome.services.query.
#: QueryException``) to the ``omero.*`` exception of the same name and fills the field
#: with the Java class's name (``fillServerError``: ``t.getClass().getName()``).
JAVA_CLASS = {
    "ApiUsageException": "ome.conditions.ApiUsageException",
    "SecurityViolation": "ome.conditions.SecurityViolation",
    "GroupSecurityViolation": "ome.conditions.GroupSecurityViolation",
    "ValidationException": "ome.conditions.ValidationException",
    "ResourceError": "ome.conditions.ResourceError",
    "InternalException": "ome.conditions.InternalException",
    "RemovedSessionException": "ome.conditions.RemovedSessionException",
    "SessionTimeoutException": "ome.conditions.SessionTimeoutException",
    "OptimisticLockException": "ome.conditions.OptimisticLockException",
    "OverUsageException": "ome.conditions.OverUsageException",
    "QueryException": "ome.services.query.QueryException",
}


def server_error(cls: type[omero.ServerError], message: str,
                 java_class: str | None = None) -> Any:
    """``cls`` as a real server sends it: ``serverExceptionClass`` names the Java class
    the server threw (``JAVA_CLASS``, or ``java_class`` for another, e.g.
    ``java.lang.IllegalArgumentException``; ``""`` for what the server's Ice layer or
    OMERO.tables raises as ``omero.*`` itself, whose field is null)."""
    name = JAVA_CLASS[cls.__name__] if java_class is None else java_class
    return cls(serverStackTrace="", serverExceptionClass=name, message=message)


def api_usage(message: str, java_class: str | None = None) -> omero.ApiUsageException:
    return server_error(omero.ApiUsageException, message, java_class)


def security_violation(message: str, java_class: str | None = None
                       ) -> omero.SecurityViolation:
    return server_error(omero.SecurityViolation, message, java_class)


def validation(message: str, java_class: str | None = None) -> omero.ValidationException:
    return server_error(omero.ValidationException, message, java_class)


def resource_error(message: str, java_class: str | None = None) -> omero.ResourceError:
    return server_error(omero.ResourceError, message, java_class)


def internal(message: str, java_class: str | None = None) -> omero.InternalException:
    return server_error(omero.InternalException, message, java_class)


class Servant:
    """Base of every emulator servant: knows the server context and its session (if any)."""

    #: Set on servants that belong to a session; checked before every call.
    session_uuid: str | None = None
    #: Operations that may run without a live session (the router's login).
    open_ops: frozenset[str] = frozenset()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def before_call(self, op: str, current: Ice.Current) -> bool:
        """Latency, faults and the session check; True when the reply must be dropped."""
        faults = self.ctx.faults
        delay = faults.ice_latency(op)
        if delay:
            time.sleep(delay)
        drop = faults.ice_drop(op)
        if drop and faults.settings.drop_after_reply:
            return True
        if drop:
            log.info("fault: dropping connection on %s", op)
            if current.con is not None:
                current.con.close(True)
            raise Ice.ConnectionLostException()
        if (self.session_uuid is not None and op not in self.open_ops
                and self.ctx.store.live_session(self.session_uuid) is None):
            self.ctx.forget_session(self.session_uuid)
            raise Ice.ObjectNotExistException(id=current.id, facet=current.facet,
                                              operation=current.operation)
        return False


def drop_reply(current: Ice.Current) -> None:
    """Close the client's connection after a call ran, so its reply is lost."""
    log.info("fault: dropping the reply of %s", current.operation)
    if current.con is not None:
        current.con.close(True)
    raise Ice.ConnectionLostException()


def _convert(exc: BaseException, service: str, op: str) -> BaseException:
    if isinstance(exc, Ice.Exception):
        return exc
    log.error("%s.%s failed:\n%s", service, op, traceback.format_exc())
    return internal(f"{service}.{op} failed in the emulator: {type(exc).__name__}: {exc}")


def _call(self: Servant, service: str, op: str, impl: Callable[..., Any] | None,
          args: tuple[Any, ...]) -> Any:
    """Faults and session check, the implementation, and a lost reply if one is due."""
    current = args[-1]
    lose_reply = self.before_call(op, current)
    if impl is None:
        # One grep-able line per gap, so the next operation to implement is in the log.
        log.info("not implemented by the emulator: %s.%s", service, op)
        raise api_usage(f"{service}.{op} is not implemented by the emulator.")
    network = self.ctx.network
    if network.shaping:
        network.request(ice_request_size(op, current, args[:-1]))
    result = impl(self, *args)
    if network.shaping:
        network.reply(ice_reply_size(result))
    if lose_reply:
        drop_reply(current)
    return result


def _sync(service: str, op: str, impl: Callable[..., Any] | None) -> Callable[..., Any]:
    def dispatch(self: Servant, *args: Any) -> Any:
        try:
            return _call(self, service, op, impl, args)
        except BaseException as exc:
            raise _convert(exc, service, op) from None

    dispatch.__name__ = op
    return dispatch


def _amd(service: str, op: str, impl: Callable[..., Any] | None, n_results: int
         ) -> Callable[..., Any]:
    def dispatch(self: Servant, cb: Any, *args: Any) -> None:
        try:
            result = _call(self, service, op, impl, args)
        except Ice.ConnectionLostException as exc:
            # Nobody will receive the answer, but the dispatch must complete or the
            # communicator waits for it forever at shutdown.
            cb.ice_exception(exc)
            return
        except BaseException as exc:
            cb.ice_exception(_convert(exc, service, op))
            return
        if n_results == 0:
            cb.ice_response()
        elif n_results == 1:
            cb.ice_response(result)
        else:
            cb.ice_response(*result)

    dispatch.__name__ = op + "_async"
    return dispatch


def servant(skeleton: type) -> Callable[[type], type]:
    """Class decorator: make ``impl`` an Ice servant of ``skeleton`` that answers every call.

    Implementations are plain methods named like the operation, taking the
    operation's parameters and then ``current``; AMD operations return their
    result (a tuple for several out-parameters) and the decorator answers.
    """

    def decorate(impl: type) -> type:
        service = skeleton.__name__
        namespace: dict[str, Any] = {}
        for op, (is_amd, n_results) in operations(skeleton).items():
            method = impl.__dict__.get(op)
            if method is None:
                for base in impl.__mro__[1:]:
                    if base is Servant or issubclass(skeleton, base) or base is object:
                        continue
                    if op in base.__dict__:
                        method = base.__dict__[op]
                        break
            if is_amd:
                namespace[op + "_async"] = _amd(service, op, method, n_results)
            else:
                namespace[op] = _sync(service, op, method)
        cls = type(impl.__name__, (impl, skeleton), namespace)
        cls.__module__ = impl.__module__
        cls.__doc__ = impl.__doc__
        return cls

    return decorate


_interfaces: dict[type, str] = {}


def interface_name(servant_obj: Any) -> str:
    """The Slice interface a servant implements, unqualified (``"RawPixelsStore"``)."""
    cls = type(servant_obj)
    name = _interfaces.get(cls)
    if name is None:
        static_id = getattr(cls, "ice_staticId", None)
        name = cls.__name__ if static_id is None else str(static_id()).rsplit("::", 1)[-1]
        _interfaces[cls] = name
    return name


def arrive(ctx: Context, interface: str, op: str, session: str | None) -> None:
    """One Ice call reached the server: count it and wait its round trip's latency."""
    ctx.calls.count(f"{interface}.{op}", session)
    ctx.network.round_trip()


_inside = threading.local()


def counted(skeleton: type) -> Callable[[type], type]:
    """Class decorator for servants that Ice dispatches to without the servant locator
    (added to the adapter directly, as omero-py's ``TableI``): count each call of
    ``skeleton``'s operations and give it the network's latency and transfer time.

    Instances need ``emulator_ctx`` (the ``Context``; ``ctx`` is often the servant's
    own) and, to be counted per session, ``session_uuid``, set before they are added.
    Calls the servant makes to its own operations are not counted.
    """

    def decorate(impl: type) -> type:
        service = skeleton.__name__
        namespace: dict[str, Any] = {}
        for op in operations(skeleton):
            method = getattr(impl, op, None)
            if method is None:
                continue
            namespace[op] = _counted_op(service, op, method)
        cls = type(impl.__name__, (impl,), namespace)
        cls.__module__ = impl.__module__
        cls.__doc__ = impl.__doc__
        return cls

    return decorate


def _counted_op(service: str, op: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def dispatch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "active", False):
            return method(self, *args, **kwargs)
        ctx: Context = self.emulator_ctx
        current = kwargs.get("current", args[-1] if args else None)
        arrive(ctx, service, op, getattr(self, "session_uuid", None))
        network = ctx.network
        if network.shaping:
            params = args[:-1] if "current" not in kwargs else args
            network.request(ice_request_size(op, current, params))
        _inside.active = True
        try:
            result = method(self, *args, **kwargs)
        finally:
            _inside.active = False
        if network.shaping:
            network.reply(ice_reply_size(result))
        return result

    dispatch.__name__ = op
    return dispatch
