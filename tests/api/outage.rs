//! Redis going away under the service: quick 503s, no hang, recovery, nothing lost.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, sensitive_read, TestApp, TENANT};

/// The instance's `/readyz` answer.
async fn readiness(app: &TestApp) -> reqwest::Response {
    app.http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz")
}

async fn until_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while readiness(app).await.status() != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "never ready again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_down_is_503_within_seconds_and_recovery_keeps_every_pending_approval() {
    let mut app = TestApp::spawn_durable().await;
    for n in 0..5 {
        app.park(&format!("req-{n}")).await;
    }
    app.redis.as_mut().expect("redis").stop();

    let calls = [
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-1"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/approvals"),
            Some(&app.tokens.agent),
        )
        .json(&serde_json::json!({"request_id": "during-outage", "action": sensitive_read()})),
        app.request(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/approvals/req-2/accept"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-3/decision?wait_seconds=30"),
            Some(&app.tokens.agent),
        ),
    ];
    for call in calls {
        let started = Instant::now();
        let response = call.send().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered within 5 s, not hung"
        );
        let problem = assert_problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
        )
        .await;
        // The client learns what to do, not how the engine failed (that is in the log).
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert_eq!(
            detail, "the approval store is unavailable; retry later",
            "{problem}"
        );
    }

    // An instance started during the outage has read no tenant policy: its submits are the
    // store's unavailability too, not a policy problem.
    let (fresh, _stop_fresh) = app.second_instance().await;
    let response = app.submit_on(&fresh, "to-a-fresh-instance").await;
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;

    app.redis.as_mut().expect("redis").restart().await;
    until_ready(&app).await;
    let pending: Value = app
        .get_json(
            &format!("/v1/tenants/{TENANT}/approvals"),
            &app.tokens.reviewer,
        )
        .await;
    let ids: Vec<_> = pending["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["req-0", "req-1", "req-2", "req-3", "req-4"],
        "no pending approval lost"
    );

    // Decisions and wake-ups work again (the subscriber reconnected by itself).
    let waiter = {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-4/decision?wait_seconds=20"),
            Some(&app.tokens.agent),
        );
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.json::<Value>().await.unwrap(), Instant::now())
        })
    };
    // The subscriber reconnects on its own backoff (up to 2 s after the outage); a decision
    // published before it is back wakes waiters only through its reconnect. Wait for it, so
    // that the bound below is about the wake-up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut conn = app.redis().connection().await;
        let subscribed: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("approvals:settled")
            .query_async(&mut conn)
            .await
            .unwrap();
        if subscribed.1 >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Parked once the instance's long-poll gauge shows it: decided before, the waiter would
    // read the decision, not be woken by it.
    app.metrics_until(
        &app.base,
        Duration::from_secs(20),
        "the waiter parked",
        |text| {
            text.lines()
                .any(|l| l == "approvals_long_polls_in_flight 1")
        },
    )
    .await;
    assert_eq!(
        app.decide("req-4", "accept", &app.tokens.reviewer)
            .await
            .status(),
        StatusCode::OK
    );
    let decided_at = Instant::now();
    let (body, woke) = waiter.await.unwrap();
    assert_eq!(body["status"], "accepted");
    // Woken, not answered at the end of its 20 s wait.
    let took = woke.saturating_duration_since(decided_at);
    assert!(took < Duration::from_secs(10), "woken after {took:?}");
    app.shut_down().await.unwrap();
}

/// Sets a Redis configuration value on the app's own server.
async fn redis_config(app: &TestApp, name: &str, value: &str) {
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A Redis that refuses writes (full, with `noeviction`) is not ready, and the metric says the
/// backend is down; when it takes writes again, both recover.
#[tokio::test]
async fn a_full_redis_is_not_ready() {
    let app = TestApp::spawn().await;
    app.park("before-full").await;
    until_ready(&app).await;
    redis_config(&app, "maxmemory", "1").await;
    let ready = readiness(&app).await;
    assert_problem(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
    app.metrics_until(&app.base, Duration::from_secs(10), "backend_up 0", |t| {
        t.contains("approvals_backend_up 0")
    })
    .await;
    redis_config(&app, "maxmemory", "0").await;
    until_ready(&app).await;
    app.metrics_until(&app.base, Duration::from_secs(10), "backend_up 1", |t| {
        t.contains("approvals_backend_up 1")
    })
    .await;
}

/// A Redis switched to an evicting policy while the service runs is not ready either.
#[tokio::test]
async fn an_evicting_redis_is_not_ready() {
    let app = TestApp::spawn().await;
    until_ready(&app).await;
    redis_config(&app, "maxmemory-policy", "volatile-lru").await;
    let ready = readiness(&app).await;
    assert_problem(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
    // Counted as a probe's failure, which does not page, not as a client's.
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "a readiness error",
        |t| {
            t.lines().any(|l| {
                l.starts_with("approvals_backend_errors_total")
                    && l.contains("source=\"readiness\"")
            })
        },
    )
    .await;
    redis_config(&app, "maxmemory-policy", "noeviction").await;
    until_ready(&app).await;
}

/// A TCP relay to Redis that can silence the connections that subscribed: their packets go
/// nowhere, and nothing is reset, as behind a NAT that forgot them or across a partition.
struct Relay {
    url: String,
    subscribers: std::sync::Arc<std::sync::Mutex<Vec<Connection>>>,
}

#[derive(Clone, Default)]
struct Connection {
    subscribed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    silenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(redis_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let subscribers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let all = subscribers.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let connection = Connection::default();
                all.lock().unwrap().push(connection.clone());
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut redis_read, mut redis_write) = outbound.into_split();
                let up = connection.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        let sent = &buffer[..n];
                        if sent
                            .windows(9)
                            .any(|w| w.eq_ignore_ascii_case(b"subscribe"))
                        {
                            up.subscribed.store(true, Ordering::SeqCst);
                        }
                        if !up.silenced.load(Ordering::SeqCst)
                            && redis_write.write_all(sent).await.is_err()
                        {
                            break;
                        }
                    }
                });
                let down = connection;
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(n) = redis_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        if !down.silenced.load(Ordering::SeqCst)
                            && client_write.write_all(&buffer[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { url, subscribers }
    }

    /// Silences every connection that has subscribed so far; later ones pass.
    fn silence_subscribers(&self) -> usize {
        use std::sync::atomic::Ordering;
        let connections = self.subscribers.lock().unwrap();
        let subscribed: Vec<_> = connections
            .iter()
            .filter(|c| c.subscribed.load(Ordering::SeqCst))
            .collect();
        for connection in &subscribed {
            connection.silenced.store(true, Ordering::SeqCst);
        }
        subscribed.len()
    }
}

/// The decision subscriber's connection goes silent without a reset: the subscriber notices
/// (it asks Redis every few seconds), reconnects, and the waiting agent gets the decision
/// made meanwhile, not only at the end of its wait.
#[tokio::test]
async fn a_silently_dead_subscriber_connection_is_replaced() {
    let mut app = TestApp::spawn().await;
    let relay = Relay::start(app.redis().port()).await;
    let url = relay.url.clone();
    app.restart_with(|s| s.redis.url = url).await;
    app.park("while-silent").await;
    // The instance subscribes as it starts; silence that connection once the relay has seen it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.silence_subscribers() == 0 {
        assert!(Instant::now() < deadline, "no subscriber through the relay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let waiter = {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/while-silent/decision?wait_seconds=30"),
            Some(&app.tokens.agent),
        );
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.json::<Value>().await.unwrap(), Instant::now())
        })
    };
    let accepted = app
        .decide("while-silent", "accept", &app.tokens.reviewer)
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let decided_at = Instant::now();
    let (body, answered) = waiter.await.unwrap();
    assert_eq!(body["status"], "accepted", "{body}");
    assert!(
        answered.saturating_duration_since(decided_at) < Duration::from_secs(15),
        "answered {:?} after the decision (the wait was 30 s)",
        answered.saturating_duration_since(decided_at)
    );
}

/// After the subscriber reconnects, every waiter re-reads its record at once; against a Redis
/// that cannot answer that read yet (here MGET refused; after a restart: still loading), a
/// waiter goes on waiting instead of answering 503.
#[tokio::test]
async fn waiters_that_cannot_reread_after_a_reconnect_go_on_waiting() {
    let app = TestApp::spawn().await;
    app.park("reread").await;
    let waiter = {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/reread/decision?wait_seconds=3"),
            Some(&app.tokens.agent),
        );
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let mut admin = app.redis().connection().await;
    // Parked once the instance's long-poll gauge shows it.
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "the waiter parked",
        |text| {
            text.lines()
                .any(|l| l == "approvals_long_polls_in_flight 1")
        },
    )
    .await;
    let () = crate::support::acl_rule("-mget")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    let response = waiter.await.unwrap();
    let () = crate::support::acl_rule("+mget")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending", "{body}");
}

/// A long-poll waiting on `request_id` (up to 20 s), once the instance's gauge shows it parked.
async fn parked_waiter(app: &TestApp, request_id: &str) -> tokio::task::JoinHandle<Value> {
    let request = app.request(
        Method::GET,
        &format!("/v1/tenants/{TENANT}/approvals/{request_id}/decision?wait_seconds=20"),
        Some(&app.tokens.agent),
    );
    let waiter = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()
    });
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "the waiter parked",
        |text| {
            text.lines()
                .any(|l| l == "approvals_long_polls_in_flight 1")
        },
    )
    .await;
    waiter
}

/// How many MGETs (a record's read) Redis has refused (`INFO commandstats`).
async fn refused_reads(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:"))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|s| s.strip_prefix("rejected_calls="))
        })
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// An instance whose subscriber Redis refuses (an ACL, a proxy without pub/sub, `maxclients`)
/// hears of no decision: its waiters, those already waiting when it was lost too, read for
/// themselves meanwhile, so a decision reaches them in seconds, not at their timeout as
/// `pending`.
#[tokio::test]
async fn waiters_hear_of_decisions_while_the_subscriber_is_refused() {
    let app = TestApp::spawn().await;
    app.park("unheard").await;
    // Waiting before the subscriber is lost.
    let waiter = parked_waiter(&app, "unheard").await;
    let mut admin = app.redis().connection().await;
    let () = crate::support::acl_rule("-subscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    // On-call staff see it.
    let subscriber_up = |up: u8| {
        move |text: &str| {
            text.lines()
                .any(|l| l == format!("approvals_redis_decision_subscriber_up {up}"))
        }
    };
    app.metrics_until(
        &app.base,
        Duration::from_secs(10),
        "subscriber down",
        subscriber_up(0),
    )
    .await;
    let accepted = app.decide("unheard", "accept", &app.tokens.reviewer).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let answer = waiter.await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    let () = crate::support::acl_rule("+subscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    app.metrics_until(
        &app.base,
        Duration::from_secs(10),
        "subscriber up",
        subscriber_up(1),
    )
    .await;
}

/// A decision taken while the subscriber was away, whose waiter's re-read after the reconnect
/// fails (Redis just back and still loading; here MGET refused), reaches the waiter once a read
/// works again: the waiter reads again shortly instead of holding `pending` to its timeout.
#[tokio::test]
async fn a_failed_re_read_after_a_reconnect_is_tried_again() {
    let app = TestApp::spawn().await;
    app.park("missed").await;
    let waiter = parked_waiter(&app, "missed").await;
    let mut admin = app.redis().connection().await;
    let () = crate::support::acl_rule("-subscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = crate::support::acl_rule("-mget")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    // Published while nobody listens: lost.
    let accepted = app.decide("missed", "accept", &app.tokens.reviewer).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let refused_before = refused_reads(&mut admin).await;
    let () = crate::support::acl_rule("+subscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    // The subscriber is back and its waiter's re-read was refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subscribers: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        if !subscribers.is_empty() && refused_reads(&mut admin).await > refused_before {
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let () = crate::support::acl_rule("+mget")
        .query_async(&mut admin)
        .await
        .unwrap();
    let answer = waiter.await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
}

/// A Temporal frontend that hangs (here: a dev server stopped with SIGSTOP) answers a decision
/// `503 backend_unavailable` before the request's own deadline: the update's timeout and the
/// read that follows it share one `temporal.call_timeout`. Each had one of its own, and their
/// sum passed `server.request_timeout`: the reviewer was answered 408, which reads as their own
/// slowness, for an outage.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_a_hung_temporal_is_503_before_the_request_deadline() {
    use approvals_testkit::temporal_server::DevServer;

    let server = tokio::task::block_in_place(|| DevServer::start(None));
    let harness = crate::support::Harness::new(crate::support::Backend::Temporal);
    let app = harness
        .spawn_with(|settings| {
            settings.temporal.address = server.address();
            // No worker polls this queue: nothing but the frozen server is in the way.
            settings.temporal.task_queue = "nobody-polls".into();
            settings.temporal.call_timeout = Duration::from_secs(4);
            settings.server.request_timeout = Duration::from_secs(6);
        })
        .await;
    app.park("on-a-hung-server").await;
    server.freeze();
    let answer = app
        .decide("on-a-hung-server", "accept", &app.tokens.reviewer)
        .await;
    server.thaw();
    assert_problem(
        answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
}

/// With Temporal answering and a Redis tenant store that cannot be reached at start, every
/// submit answers 503 until the tenants' policies are first read: the instance is not ready
/// meanwhile. `/readyz` asked Temporal alone and said ready, so a load balancer sent it
/// traffic it failed.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_read_the_tenants_policies_is_not_ready() {
    let closed = format!("redis://127.0.0.1:{}", approvals_testkit::free_port());
    let app = crate::support::Harness::new(crate::support::Backend::Temporal)
        .spawn_with(|settings| {
            settings.tenant_store.kind = approvals::config::TenantStoreKind::Redis;
            settings.redis.url = closed.clone();
        })
        .await;
    let submitted = app.submit("before-any-policy", sensitive_read()).await;
    assert_eq!(submitted.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        readiness(&app).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// A shutdown does not wait for a pending-figures refresh stuck on a hung Temporal (a
/// visibility walk of up to `temporal.scan_timeout`): the refresh is dropped. It was awaited,
/// and the exit came after the supervisor's kill.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_stuck_on_a_hung_temporal_does_not_hold_up_the_shutdown() {
    use approvals_testkit::temporal_server::DevServer;

    let server = tokio::task::block_in_place(|| DevServer::start(None));
    let mut app = crate::support::Harness::new(crate::support::Backend::Temporal)
        .spawn_with(|settings| {
            settings.temporal.address = server.address();
            settings.temporal.task_queue = "nobody-polls".into();
            settings.temporal.call_timeout = Duration::from_secs(4);
            settings.temporal.scan_timeout = Duration::from_secs(25);
            settings.server.request_timeout = Duration::from_secs(6);
            settings.server.shutdown_grace = Duration::from_secs(1);
        })
        .await;
    app.metrics_until(
        &app.base,
        Duration::from_secs(20),
        "the first figures",
        |m| m.contains("approvals_pending_snapshot_age_seconds "),
    )
    .await;
    server.freeze();
    // The figures stop being refreshed: a refresh is stuck in its walk.
    app.metrics_until(&app.base, Duration::from_secs(10), "a stuck refresh", |m| {
        m.lines()
            .find_map(|l| l.strip_prefix("approvals_pending_snapshot_age_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|age| age >= 2.0)
    })
    .await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.shut_down()).await;
    server.thaw();
    assert!(stopped.is_ok(), "the shutdown waited for the stuck refresh");
}

/// A Temporal namespace without the `TenantId` search attribute: the server refuses every
/// workflow start, so every submit would answer 503. The instance says so at start and is not
/// ready (it was: the probe only asked whether the namespace exists).
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_without_the_tenant_search_attribute_is_not_ready() {
    let shared = crate::shared_temporal::shared().await;
    let bare = format!("bare-{}", std::process::id());
    approvals_testkit::temporal_server::create_namespace(&shared.address, &bare);
    let app = crate::support::Harness::new(crate::support::Backend::Temporal)
        .spawn_with(|settings| settings.temporal.namespace = bare.clone())
        .await;
    assert_eq!(
        readiness(&app).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Pending figures that cannot be recomputed while the backend answers (here: the pending-age
/// sums replaced with a string; on Temporal, a visibility walk past `scan_timeout`) leave
/// `approvals_backend_up` at 1, as `/readyz` says: a failed pass set it to 0 and the next probe
/// back to 1, and the critical not-ready alert paged for a service that served every request.
/// Stale figures are what `approvals_pending_snapshot_age_seconds` (and its own alert) says.
#[tokio::test]
async fn figures_that_cannot_be_computed_do_not_make_a_ready_backend_down() {
    let app = TestApp::spawn().await;
    app.park("figures-1").await;
    app.metrics_until(&app.base, Duration::from_secs(10), "backend_up 1", |t| {
        t.contains("approvals_backend_up 1")
    })
    .await;
    break_pending_figures(&app).await;
    // Several failed passes (the interval is 2 s): the figures age.
    let metrics = app
        .metrics_until(&app.base, Duration::from_secs(20), "stale figures", |t| {
            snapshot_age(t).is_some_and(|age| age >= 5.0)
        })
        .await;
    assert!(metrics.contains("approvals_backend_up 1"), "{metrics}");
    assert_eq!(readiness(&app).await.status(), StatusCode::OK);
}

/// Pending figures whose passes keep failing are withdrawn after ten failures in a row, their age
/// still shown: frozen on an instance cut off from its backend, they won the alerts' and
/// dashboards' `max by (tenant)` over the instances that still count, and kept "about to
/// expire" firing for an approval decided since.
#[tokio::test]
async fn figures_that_keep_failing_are_withdrawn_and_their_age_stays() {
    let app =
        TestApp::spawn_with(|s| s.approvals.stats_interval = Duration::from_millis(200)).await;
    app.park("figures-1").await;
    let pending = format!("approvals_pending{{tenant=\"{}\"}} 1", app.tenant);
    app.metrics_until(&app.base, Duration::from_secs(10), "the figure", |t| {
        t.contains(&pending)
    })
    .await;
    break_pending_figures(&app).await;
    let metrics = app
        .metrics_until(
            &app.base,
            Duration::from_secs(20),
            "figures withdrawn",
            |t| !t.contains(&format!("approvals_pending{{tenant=\"{}\"}}", app.tenant)),
        )
        .await;
    assert!(
        snapshot_age(&metrics).is_some_and(|age| age >= 2.0),
        "{metrics}"
    );
}

/// Makes every pending-figures pass fail from now on, while the backend answers its ping:
/// the pending-age sums replaced with a string.
async fn break_pending_figures(app: &TestApp) {
    let mut conn = app.redis().connection().await;
    let _: () = redis::cmd("SET")
        .arg("approvals:pending_submitted_ms")
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("set");
}

fn snapshot_age(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("approvals_pending_snapshot_age_seconds "))
        .and_then(|v| v.parse().ok())
}

/// An instance started while its policy store (here Redis, the engine too) cannot be read is
/// not ready until it has read the tenants' policies, and says so in `/metrics`: with a
/// Temporal engine answering, that figure is the only one that shows why `/readyz` is 503
/// (`ApprovalsNotReady` reads it).
#[tokio::test]
async fn an_instance_that_never_read_the_policies_says_so() {
    let mut app = TestApp::spawn_durable().await;
    app.redis.as_mut().expect("redis").stop();
    let (late, stop_late) = app.second_instance().await;
    let synced = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("approvals_policies_synced "))
            .map(str::to_owned)
    };
    app.metrics_until(&late, Duration::from_secs(5), "not synced", |t| {
        synced(t).as_deref() == Some("0")
    })
    .await;
    let ready = app
        .http
        .get(format!("{late}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    app.redis.as_mut().expect("redis").restart().await;
    app.metrics_until(&late, Duration::from_secs(15), "synced", |t| {
        synced(t).as_deref() == Some("1")
    })
    .await;
    stop_late.cancel();
}
