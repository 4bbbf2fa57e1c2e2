"""How a live stream resumes: each event once, the resume point only forward. On Temporal the
service repeats the 15 s before a resume point (an event can become visible late, behind the
last id a client saw), so the client must drop what it yielded already. The service side is
tested against both engines in the Rust contract tests (`tests/api/events.rs`); these need no
service."""

from __future__ import annotations

from approvals_client import _core
from approvals_client.models import AuditEvent, LiveEvent


def event(event_id: str) -> LiveEvent:
    data = AuditEvent.from_json(
        {
            "event_id": event_id,
            "timestamp": "2026-12-04T09:00:00Z",
            "tenant": "acme",
            "approval_id": "req-1",
            "kind": "submitted",
            "actor": "agent",
            "details": {},
        }
    )
    return LiveEvent(event="parked", id=event_id, data=data)


def test_a_repeated_stretch_yields_only_what_was_not_seen() -> None:
    resume = _core.Resume("0001733000000002-1-b")
    # After a reconnect on Temporal: the window before the resume point again, with one event
    # that became visible only now (…001-1-late), then what is new.
    replayed = ["0001733000000001-1-a", "0001733000000001-1-late", "0001733000000003-1-c"]
    resume.first_time(event("0001733000000001-1-a"))  # yielded before the disconnect
    yielded = [i for i in replayed if resume.first_time(event(i))]
    assert yielded == ["0001733000000001-1-late", "0001733000000003-1-c"]
    # The resume point moved forward only, past the late one.
    assert resume.last == "0001733000000003-1-c"


def test_redis_ids_order_by_sequence_within_a_millisecond() -> None:
    resume = _core.Resume(None)
    for event_id in ["1733000000000-9", "1733000000000-10", "1733000000000-2"]:
        assert resume.first_time(event(event_id))
    assert resume.last == "1733000000000-10"
    assert not resume.first_time(event("1733000000000-9"))


def test_the_memory_of_seen_ids_is_bounded() -> None:
    resume = _core.Resume(None)
    for n in range(_core.Resume.SEEN_LIMIT + 10):
        resume.first_time(event(f"{1733000000000 + n}-0"))
    # The oldest are forgotten; the newest are still recognised.
    assert resume.first_time(event("1733000000000-0"))
    assert not resume.first_time(event(f"{1733000000000 + _core.Resume.SEEN_LIMIT + 9}-0"))


def test_a_stream_left_before_its_first_event_resumes_from_its_greeting() -> None:
    # The service greets a stream opened without Last-Event-ID with an id of its start.
    resume, decoder = _core.Resume(None), _core.SseDecoder()
    for line in ["retry: 1000", "id: 1733000000000-18446744073709551615"]:
        assert decoder.feed(line) is None
        resume.moved_to(decoder.dispatched_id)
    assert resume.last is None, "an id counts only once its frame ends"
    assert decoder.feed("") is None
    resume.moved_to(decoder.dispatched_id)
    assert resume.last == "1733000000000-18446744073709551615"
    # A later greeting (a resumed stream has none) or an event never moves it back.
    resume.moved_to("1732000000000-0")
    assert resume.last == "1733000000000-18446744073709551615"


def test_a_position_sent_without_an_event_moves_the_resume_point_forward() -> None:
    # Past a long stretch of events it does not send, the service sends how far it has read.
    resume, decoder = _core.Resume("1733000000000-0"), _core.SseDecoder()
    for line in [": read up to here", "id: 1733000005000-3", ""]:
        assert decoder.feed(line) is None
        resume.moved_to(decoder.dispatched_id)
    assert resume.last == "1733000005000-3"
