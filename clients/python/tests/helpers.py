"""Test helpers: a reviewer that decides what parks, from another thread; waiting for a
condition; a transport that counts the decision long-polls."""

from __future__ import annotations

import threading
import time
from typing import Callable

import httpx

from approvals_client import Approval, ApprovalsClient


class CountingPolls(httpx.BaseTransport):
    """A real connection to the service that counts decision long-polls."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.polls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/decision"):
            self.polls += 1
        return self.inner.handle_request(request)


def until(condition: Callable[[], bool], seconds: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Reviewer(threading.Thread):
    """Decides each approval that parks (up to `count`), as a human reviewer would: it lists the
    pending approvals and accepts (or rejects) them, in another thread."""

    def __init__(self, client: ApprovalsClient, verdict: str = "accept", count: int = 1, reason: str = "reviewed in test") -> None:
        super().__init__(daemon=True)
        self.client, self.verdict, self.count, self.reason = client, verdict, count, reason
        self.decided: list[Approval] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while len(self.decided) < self.count and not self.stop.is_set():
                for approval in self.client.list("pending").items:
                    decide = self.client.accept if self.verdict == "accept" else self.client.reject
                    self.decided.append(decide(approval.id, reason=self.reason, action_digest=approval.action_digest))
                time.sleep(0.05)
        except BaseException as error:  # surfaced by finish()
            self.error = error

    def finish(self, seconds: float = 30) -> list[Approval]:
        self.join(seconds)
        self.stop.set()
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "the reviewer thread did not finish"
        return self.decided
