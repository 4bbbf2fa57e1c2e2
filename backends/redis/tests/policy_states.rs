//! The policy reload poll: every instance asks for every tenant's state each
//! `policy.reload_interval` (250 ms), so an idle poll must cost Redis one small read, not every
//! tenant's state; a change is still seen at the next poll, and a change written without
//! counting (an earlier version's instance, a hand edit) within a few seconds.

use std::time::{Duration, Instant};

use approvals_core::conformance::fresh_tenant;
use approvals_core::{Lifetimes, PolicyState, PolicyStore, Swap};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;
use redis::AsyncCommands;

fn changed(state: &PolicyState) -> PolicyState {
    PolicyState {
        generation: state.generation + 1,
        history: vec![None],
        ..state.clone()
    }
}

#[tokio::test]
async fn an_idle_reload_poll_does_not_read_every_state_and_a_change_is_seen_at_once() {
    let server = RedisServer::start().await;
    let backend = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
        .expect("backend");
    let mut conn = server.connection().await;
    let (first, second) = (fresh_tenant("first"), fresh_tenant("second"));

    let next = changed(&PolicyState::default());
    let swapped = backend
        .swap_state(&first, &PolicyState::default(), &next)
        .await
        .expect("swap");
    assert_eq!(swapped, Swap::Done);
    let states = backend.states().await.expect("states");
    assert_eq!(states.get(&first), Some(&Ok(next.clone())));

    let before = server.calls("hgetall").await;
    for _ in 0..20 {
        assert_eq!(backend.states().await.expect("states"), states);
    }
    assert_eq!(
        server.calls("hgetall").await,
        before,
        "idle polls read no state"
    );

    // Another instance's change, counted: in the very next poll.
    let other = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
        .expect("backend");
    let second_state = changed(&PolicyState::default());
    other
        .swap_state(&second, &PolicyState::default(), &second_state)
        .await
        .expect("swap");
    let states = backend.states().await.expect("states");
    assert_eq!(states.get(&second), Some(&Ok(second_state)));

    // Written without counting (as an instance of an earlier version does): seen within the
    // whole-read period, 5 s.
    let hand_edited = changed(&next);
    let _: () = conn
        .hset(
            "policy:states",
            first.as_str(),
            serde_json::to_string(&hand_edited).expect("json"),
        )
        .await
        .expect("hset");
    let edited_at = Instant::now();
    loop {
        let states = backend.states().await.expect("states");
        if states.get(&first) == Some(&Ok(hand_edited.clone())) {
            break;
        }
        assert!(
            edited_at.elapsed() < Duration::from_secs(7),
            "an uncounted change was never read"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A state written by hand (or by another version: other spacing, key order or fields) can
/// still be changed: the compare-and-set looks at its generation, not its bytes. It compared
/// bytes, and every change of that tenant was refused as "moved" for good. A change made
/// meanwhile (a new generation) is still refused.
#[tokio::test]
async fn a_written_state_equal_to_none_can_still_be_changed() {
    let server = RedisServer::start().await;
    let backend = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
        .expect("backend");
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("reset-by-hand");
    // What a reset by hand or a restore tool writes: the default state, spelled out.
    let reset = r#"{"generation":0,"active":null,"candidate":null,"history":[]}"#;
    let _: () = conn
        .hset("policy:states", tenant.as_str(), reset)
        .await
        .expect("hset");
    let read = backend.state(&tenant).await.expect("state");
    assert_eq!(read, PolicyState::default());
    assert_eq!(
        backend
            .swap_state(&tenant, &read, &changed(&read))
            .await
            .expect("swap"),
        Swap::Done
    );
    assert_eq!(backend.state(&tenant).await.expect("state").generation, 1);
}

#[tokio::test]
async fn a_state_written_by_hand_can_still_be_changed() {
    let server = RedisServer::start().await;
    let backend = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
        .expect("backend");
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("hand-edited");
    let by_hand = "{\n  \"history\": [],\n  \"generation\": 4\n}";
    let _: () = conn
        .hset("policy:states", tenant.as_str(), by_hand)
        .await
        .expect("hset");
    let read = backend.state(&tenant).await.expect("state");
    assert_eq!(read.generation, 4);
    let next = changed(&read);
    assert_eq!(
        backend
            .swap_state(&tenant, &read, &next)
            .await
            .expect("swap"),
        Swap::Done
    );
    // Another change from the same, now old, state: the generation moved.
    assert_eq!(
        backend
            .swap_state(&tenant, &read, &changed(&read))
            .await
            .expect("swap"),
        Swap::Moved
    );
}
