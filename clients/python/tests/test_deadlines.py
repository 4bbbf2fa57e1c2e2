"""The caller's deadline holds against a peer that never answers, and mistakes that no retry
mends fail at once. No service is needed: a socket that accepts and stays silent (an instance
gone without a reset, a dropped NAT entry) is the peer."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from approvals_client import ApprovalsClient, AsyncApprovalsClient, RetryPolicy, TransportError, WaitTimeout
from approvals_client._core import DEADLINE_GRACE

# The deadline, its grace, and a second for backoff and a loaded machine. Without the cut
# an attempt waited out its whole connect or read timeout (35 s and more).
SLACK = DEADLINE_GRACE + 1.0


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server whose kernel accepts connections and which never reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_wait_on_a_silent_peer_ends_near_its_deadline(silent_url: str) -> None:
    client = ApprovalsClient(silent_url, "token", "acme")
    started = time.monotonic()
    with pytest.raises((TransportError, WaitTimeout)):
        client.wait("req-1", timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK


def test_the_timeout_of_submit_and_wait_covers_the_submit(silent_url: str) -> None:
    client = ApprovalsClient(silent_url, "token", "acme")
    started = time.monotonic()
    with pytest.raises(TransportError):
        client.submit_and_wait({"type": "document_read"}, timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK


@pytest.mark.anyio
async def test_the_async_client_keeps_the_same_deadline(silent_url: str) -> None:
    async with AsyncApprovalsClient(silent_url, "token", "acme") as client:
        started = time.monotonic()
        with pytest.raises(TransportError):
            await client.submit_and_wait({"type": "document_read"}, timeout=1.0)
        assert time.monotonic() - started < 1.0 + SLACK


def test_a_url_without_a_scheme_fails_at_once() -> None:
    client = ApprovalsClient("127.0.0.1:8080", "token", "acme")
    started = time.monotonic()
    with pytest.raises(TransportError):
        client.get("req-1")
    # Retried with backoff, it took about ten seconds to say the same.
    assert time.monotonic() - started < 0.5


def test_a_per_poll_wait_under_a_second_is_refused() -> None:
    # With 0 a wait asked again and again without pause until someone decided.
    with pytest.raises(ValueError):
        ApprovalsClient("http://127.0.0.1:8080", "token", "acme", poll_seconds=0)
    client = ApprovalsClient("http://127.0.0.1:8080", "token", "acme")
    with pytest.raises(ValueError):
        client.wait("req-1", poll_seconds=0)


def test_backoff_stays_at_its_cap_however_many_attempts() -> None:
    # A live stream reconnects without end; 2.0 ** 1024 raised OverflowError about an hour
    # into an outage.
    assert RetryPolicy().backoff(5_000) <= RetryPolicy().max_backoff


# A budget far shorter than the client's timeout: before, the first attempt ran its whole read
# timeout (10 s here, 35 s by default) whatever the budget said.
BUDGET = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.1, max_elapsed=1.5)


def test_no_attempt_outlasts_the_retry_budget(silent_url: str) -> None:
    client = ApprovalsClient(silent_url, "token", "acme", timeout=10, retry=BUDGET)
    started = time.monotonic()
    with pytest.raises(TransportError):
        client.get("req-1")
    assert time.monotonic() - started < 1.5 + 1.0


@pytest.mark.anyio
async def test_nor_in_the_async_client(silent_url: str) -> None:
    async with AsyncApprovalsClient(silent_url, "token", "acme", timeout=10, retry=BUDGET) as client:
        started = time.monotonic()
        with pytest.raises(TransportError):
            await client.get("req-1")
        assert time.monotonic() - started < 1.5 + 1.0
