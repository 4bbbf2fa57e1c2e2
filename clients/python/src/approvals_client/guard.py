"""`require_approval`: put the approvals service in front of a tool function."""

from __future__ import annotations

import datetime
import enum
import functools
import inspect
import json
import os
import threading
import uuid
from typing import Any, Awaitable, Callable, Mapping, TypeVar, Union, cast

import anyio
import anyio.to_thread

from . import _core
from .aio import AsyncApprovalsClient
from .client import ApprovalsClient
from .errors import ApprovalRefused, ApprovalsError, WaitTimeout
from .models import ActionChanged, GuardOutcome, Outcome, TimedOut

F = TypeVar("F", bound=Callable[..., Any])
AnyClient = Union[ApprovalsClient, AsyncApprovalsClient]
ClientSource = Union[AnyClient, Callable[[], AnyClient]]
ArgsFunction = Callable[..., Any]


def _jsonable(name: str, value: Any) -> Any:
    """`value` as the policy will see it, which must be what the function gets: paths, times,
    UUIDs and enums by their usual text, in lists, tuples and dicts too; anything else that
    is not JSON is refused (a `repr` is not what the function acts on, and a policy rule would
    judge something else), and so are NaN and the infinities (no JSON number: a policy cannot
    compare them) and keys that are not strings (JSON would turn `1` into `"1"`)."""
    try:
        converted = _converted(name, value, ())
    except RecursionError as error:  # a list or dict that holds itself
        raise TypeError(f"argument {name!r} holds itself: pass an `action=` function") from error
    try:
        json.dumps(converted, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"argument {name!r} ({type(value).__name__}) is not JSON: give require_approval an "
            "`action=` function that says what the policy should see"
        ) from error
    return converted


def _converted(name: str, value: Any, within: tuple[int, ...]) -> Any:
    """`value` with paths, times, UUIDs and enums as text, however deep; the rest as it is,
    for `json.dumps` to judge. `within`: the ids of the lists and dicts it is in."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _converted(name, value.value, within)
    if isinstance(value, (list, tuple, dict)):
        if id(value) in within:
            raise RecursionError
        within = within + (id(value),)
    if isinstance(value, (list, tuple)):
        return [_converted(name, item, within) for item in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"argument {name!r} has a key that is not a string ({key!r}): pass an `action=` function")
        return {key: _converted(name, item, within) for key, item in value.items()}
    return value


def default_action(action_type: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`{"type": action_type, <each argument by name>...}`: the call's arguments become the
    action's members, where the policy reads them (`resource`, `classification`, ...).
    `self`/`cls` are left out. A value that is not JSON (beyond paths, times, UUIDs and enums)
    raises `TypeError` before anything is sent, and so does an argument named `type` (it would
    be the action's type): the policy must see what the function will act on."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    action: dict[str, Any] = {"type": action_type}
    for name, value in bound.arguments.items():
        if name in ("self", "cls"):
            continue
        parameter = signature.parameters[name]
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            for key, item in value.items():
                if key in action:
                    raise TypeError(f"argument {key!r} would overwrite the action's {key!r}: pass an `action=` function")
                action[key] = _jsonable(key, item)
        elif name == "type":
            raise TypeError("an argument named 'type' would overwrite the action's type: pass an `action=` function")
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            action[name] = [_jsonable(name, item) for item in value]
        else:
            action[name] = _jsonable(name, value)
    return action


def is_async(function: Callable[..., Any]) -> bool:
    """Whether calling `function` gives a coroutine: an `async def`, or an object whose class
    has an `async def __call__` (which `inspect.iscoroutinefunction` does not see: the guard
    took one for a sync function and waited in the event loop's thread)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(type(function), "__call__", None))


def as_sent(action: Any) -> Any:
    """`action` as the service reads it (JSON and back): a copy that no later change to the
    caller's objects reaches, compared by value as the policy and the reviewer saw it."""
    return json.loads(json.dumps(dict(action) if isinstance(action, Mapping) else action))


async def wait_in_thread(client: ApprovalsClient, call: dict[str, Any]) -> Outcome:
    """`client.submit_and_wait(**call)` in a thread of its own, not one of anyio's shared 40 (a
    wait can last hours), abandoned when the caller is cancelled (`fail_after`, `wait_for`):
    the function then does not run, and the thread, told so, stops at its next attempt or
    pause rather than long-poll on until the approval is decided or expires."""
    gone = threading.Event()

    def work() -> Outcome:
        token = _core.ABANDONED.set(gone)
        try:
            return client.submit_and_wait(**call)
        finally:
            _core.ABANDONED.reset(token)

    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))
    finally:
        gone.set()


async def submit_and_wait(client: AnyClient, owned: bool, call: dict[str, Any]) -> Outcome:
    """`client.submit_and_wait(**call)` for an async function: awaited on an async client
    (closed after when the call `owned` it), in a thread of its own on a sync one."""
    if isinstance(client, ApprovalsClient):
        return await wait_in_thread(client, call)
    try:
        return await client.submit_and_wait(**call)
    finally:
        if owned:
            # Shielded: a cancelled caller (`fail_after`) would cancel the close too.
            with anyio.CancelScope(shield=True):
                await client.aclose()


def unanswered_by_deadline(error: ApprovalsError) -> bool:
    """Whether `submit_and_wait` failed because its deadline passed before the service answered
    the submit: the submit's retries of what may pass (a `503`, a `429 too_many_requests` or a
    proxy's `429`, a dropped connection) stopped at the deadline, not by the retry policy.
    That is the guard's `timeout` passing with nothing decided, as during the wait, and goes to
    `on_refused` as `TimedOut` (the outage's error, raised, ended the agent's run). A failure
    that retrying does not cure (`400`, `401`, `403`, `409`, `429 too_many_pending`...) is no
    timeout, and an error of the wait (it names the approval) is the wait's own: the wait
    raises `WaitTimeout` itself when the deadline ends it."""
    return error._deadline_passed and error.approval_id is None


def close_unused(client: AsyncApprovalsClient) -> None:
    """Closes an async client from sync code, in a thread with an event loop of its own (the
    caller's thread may be running one). It was never used: nothing but its pool to close."""
    closer = threading.Thread(target=anyio.run, args=(client.aclose,), name="approvals-close")
    closer.start()
    closer.join()


def require_approval(
    client: ClientSource,
    *,
    action: ArgsFunction | None = None,
    action_type: str | None = None,
    context: ArgsFunction | Mapping[str, Any] | None = None,
    request_id: ArgsFunction | None = None,
    agent_id: str | None = None,
    timeout: float | None = None,
    on_refused: Callable[[GuardOutcome], Any] | None = None,
) -> Callable[[F], F]:
    """Decorates a function (sync or async) so that each call is first submitted to the
    approvals service and waited on; the function runs only when the action is allowed by the
    policy or approved by a reviewer, and only if its arguments still build the action that
    was sent (a list or dict mutated during the wait would have it act on what nobody saw).
    Otherwise `ApprovalRefused` (carrying the `Denied`, `Rejected` or `Expired` outcome, or
    `ActionChanged`) is raised, or `on_refused(outcome)` is returned instead. An `action`
    function is called again for that check, so it must be pure: the same arguments, the
    same action.

    - `client`: an `ApprovalsClient` (sync or async functions; an async function waits in a
      worker thread, which stops when the caller is cancelled) or an `AsyncApprovalsClient`
      (async functions), or a function returning one. A function's `ApprovalsClient` is made
      once and kept; its `AsyncApprovalsClient` is made for each call and closed when the wait
      is over (its connections belong to the event loop of the call), so it must return a new
      one: to share an async client, pass the client itself.
    - `action(*args, **kwargs)`: builds the action from the call; by default
      `{"type": action_type or the function's name, **arguments}`.
    - `context`: a mapping, or a function of the call's arguments, sent as the request context.
    - `request_id(*args, **kwargs)`: an id that names this call (e.g. the model's tool-call
      id), so a repeated call finds the earlier approval rather than parking a second one;
      by default each call is a new request.
    - `timeout`: the caller's deadline for the submit and the wait, in seconds; None waits
      until the approval is decided or expires. Past it the function does not run:
      `on_refused` gets a `TimedOut` outcome, or without one `WaitTimeout` is raised. A
      deadline that passes while the submit is still retried through an outage (`503`,
      `429 too_many_requests`, an unreachable service) is a `TimedOut` too, whose `approval`
      is None; without `on_refused` the submit's last error is raised.
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        # A callable object has no `__name__` of its own: its class's.
        name = getattr(function, "__name__", type(function).__name__)
        kind = action_type or name
        if action is None and "type" in signature.parameters:
            raise TypeError(
                f"{name}: an argument named 'type' would overwrite the action's type; "
                "pass an `action=` function"
            )

        if on_refused is not None and is_async(on_refused) and not is_async(function):
            # A sync tool would hand the framework a coroutine nobody awaits.
            raise TypeError(f"{name}: an async on_refused needs an async function")

        resolved: list[ApprovalsClient] = []
        resolving = threading.Lock()

        def resolve() -> tuple[AnyClient, bool]:
            """The client for a call, and whether the call owns it (and must close it)."""
            if isinstance(client, (ApprovalsClient, AsyncApprovalsClient)):
                return client, False
            # A sync client from a factory is made once (a client per call left a connection
            # pool per call behind). An async one is made for each call and closed after it:
            # its connections belong to the event loop it was made in, and a tool run with
            # `asyncio.run` per call has a new loop each time.
            with resolving:
                if resolved:
                    return resolved[0], False
                made = client()
                if isinstance(made, ApprovalsClient):
                    resolved.append(made)
                    return made, False
                return made, True

        def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return action(*args, **kwargs) if action is not None else default_action(kind, signature, args, kwargs)

        def request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            ctx = context(*args, **kwargs) if callable(context) else context
            rid = request_id(*args, **kwargs) if request_id is not None else None
            return {"action": build(args, kwargs), "context": ctx, "request_id": rid, "agent_id": agent_id, "timeout": timeout}

        def unchanged(outcome: Outcome, sent: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> GuardOutcome:
            """`outcome`, or `ActionChanged` when it permits but the arguments no longer build
            the action `sent`: the function gets the caller's own objects, which another thread
            or task may have changed during a wait of hours."""
            if not outcome.permitted:
                return outcome
            now = build(args, kwargs)
            return outcome if as_sent(now) == sent else ActionChanged(outcome, now)

        def timed_out(error: ApprovalsError) -> GuardOutcome | None:
            """A wait (or a submit, see `unanswered_by_deadline`) past `timeout`, as a refusal
            for `on_refused` (a framework's tool answers the model rather than end the run);
            None for any other failure, or without `on_refused`: it is raised as it was."""
            if on_refused is None:
                return None
            if isinstance(error, WaitTimeout):
                return TimedOut(error.approval)
            if unanswered_by_deadline(error):
                return TimedOut(None)
            return None

        def refused(outcome: GuardOutcome) -> Any:
            if on_refused is not None:
                return on_refused(outcome)
            raise ApprovalRefused(outcome)

        if is_async(function):

            @functools.wraps(function)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                # Before the client: an argument refused here leaves no client of a factory open.
                call = request(args, kwargs)
                sent = as_sent(call["action"])
                current, owned = resolve()
                try:
                    outcome = unchanged(await submit_and_wait(current, owned, call), sent, args, kwargs)
                except ApprovalsError as error:
                    refusal = timed_out(error)
                    if refusal is None:
                        raise
                    outcome = refusal
                if not outcome.permitted:
                    # An async tool's `on_refused` may be async too: its answer is awaited, not
                    # handed to the framework as a coroutine nobody runs.
                    answer = refused(outcome)
                    return await answer if inspect.isawaitable(answer) else answer
                return await cast(Callable[..., Awaitable[Any]], function)(*args, **kwargs)

            return cast(F, guarded_async)

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            current, owned = resolve()
            if isinstance(current, AsyncApprovalsClient):
                if owned:
                    close_unused(current)
                raise TypeError(f"{name} is not async: guard it with an ApprovalsClient")
            call = request(args, kwargs)
            sent = as_sent(call["action"])
            try:
                outcome = unchanged(current.submit_and_wait(**call), sent, args, kwargs)
            except ApprovalsError as error:
                refusal = timed_out(error)
                if refusal is None:
                    raise
                outcome = refusal
            if not outcome.permitted:
                return refused(outcome)
            return function(*args, **kwargs)

        return cast(F, guarded)

    return decorate
