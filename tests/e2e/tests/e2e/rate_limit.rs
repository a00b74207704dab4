use futures::StreamExt;
use sagapay_e2e::{StackOptions, TestStack, DEV_API_KEY};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Requests of one merchant at once on a cold gateway.
const BURST: usize = 300;

/// The server's side of the TCP connections to 127.0.0.1:`port` (this process's network,
/// `/proc/net/tcp`): how many are established, and how many of those hold bytes the server
/// has not read yet.
fn gateway_connections(port: u16) -> (usize, usize) {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields.get(3) == Some(&"01");
            let rx_queue = fields.get(4)?.split(':').nth(1)?;
            let unread = u64::from_str_radix(rx_queue, 16).ok()? > 0;
            (fields.get(1) == Some(&local.as_str()) && established).then_some(unread)
        })
        .fold((0, 0), |(n, unread), u| (n + 1, unread + usize::from(u)))
}

/// With 2 requests per second and a burst of 5, a client sending as fast as it can is admitted
/// the burst plus what refilled while it sent, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_is_admitted_its_burst_plus_its_rate_and_then_gets_429() {
    let (per_second, burst) = (2u32, 5u32);
    let stack = TestStack::spawn_with(StackOptions {
        gateway_rate_limit: Some((per_second, burst)),
        ..StackOptions::default()
    })
    .await;
    let url = format!("{}/payments/{}", stack.gateway_url(), Uuid::now_v7());
    let started = Instant::now();
    let mut admitted = 0u32;
    let mut first_refusal = None;
    for i in 0..30 {
        let resp = stack
            .http
            .get(&url)
            .header("x-api-key", DEV_API_KEY)
            .send()
            .await
            .unwrap();
        if i == 0 {
            assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
            assert_eq!(resp.headers()["x-ratelimit-remaining"], "4");
        }
        if resp.status() == 429 {
            if first_refusal.is_none() {
                let retry_after: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    retry_after, 1,
                    "at 2 per second a token is at most 0.5 s away"
                );
                let body: serde_json::Value = resp.json().await.unwrap();
                first_refusal = Some(body);
            }
        } else {
            assert_eq!(resp.status(), 404, "an admitted request reaches the route");
            admitted += 1;
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let budget = burst + (elapsed_s * f64::from(per_second)).ceil() as u32;
    assert!(
        admitted >= burst && admitted <= budget,
        "admitted {admitted}, budget {budget} over {elapsed_s:.2} s"
    );
    let refusal = first_refusal.expect("some requests were refused");
    assert_eq!(refusal["error"]["type"], "rate_limit_error");
    assert_eq!(refusal["error"]["code"], "rate_limited");
    assert!(refusal["request_id"].is_string());
    stack.teardown().await;
}

/// An anonymous flood: 5,000 requests with random keys from one address (127.0.0.2) while a
/// merchant pays 20 times a second from another. The flood is looked up in the database at
/// most its address's budget and gets 429 for the rest, without a database connection; the
/// merchant, whose key is cached, sees no error and does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_random_keys_from_one_address_gets_429_and_the_merchant_sees_nothing() {
    let (per_second, burst) = (20u32, 100u32);
    let stack = TestStack::spawn_with(StackOptions {
        gateway_key_lookups: Some((per_second, burst)),
        // It measures the merchant's latency: no other test's stack beside it.
        alone: true,
        ..StackOptions::default()
    })
    .await;
    let flooder = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let url = format!("{}/payments/{}", stack.gateway_url(), Uuid::now_v7());
    // Warm: the merchant's key cached, connections open (a first request is not the flood's).
    for i in 0..3 {
        let (status, _) = stack
            .create_payment(serde_json::json!({
                "customer_id": "cust-flood", "amount_cents": 1_000, "currency": "USD",
                "idempotency_key": format!("warm-{i}")}))
            .await;
        assert_eq!(status, 201);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();

    let flood = async {
        let statuses: Vec<u16> = futures::stream::iter(0..5_000)
            .map(|_| {
                let req = flooder
                    .get(&url)
                    .header("x-api-key", format!("sk_{}", Uuid::new_v4().simple()));
                async move { req.send().await.unwrap().status().as_u16() }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        statuses
    };
    let merchant = async {
        let mut latencies_ms = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let mut i = 0;
        // For the whole flood, and at least two seconds.
        while !done.load(std::sync::atomic::Ordering::SeqCst) || started.elapsed().as_secs() < 2 {
            tick.tick().await;
            let sent = Instant::now();
            let (status, body) = stack
                .create_payment(serde_json::json!({
                    "customer_id": "cust-flood", "amount_cents": 1_000, "currency": "USD",
                    "idempotency_key": format!("flood-{i}")}))
                .await;
            latencies_ms.push(sent.elapsed().as_secs_f64() * 1_000.0);
            assert_eq!(status, 201, "the merchant got {status}: {body}");
            i += 1;
        }
        latencies_ms
    };
    let (statuses, mut latencies_ms) = tokio::join!(flood, merchant);
    let elapsed_s = started.elapsed().as_secs_f64();

    let looked_up = statuses.iter().filter(|&&s| s == 401).count() as f64;
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(
        looked_up as usize + refused,
        5_000,
        "every flood request is 401 or 429"
    );
    let budget = f64::from(burst) + elapsed_s * f64::from(per_second);
    assert!(
        looked_up <= budget.ceil(),
        "{looked_up} lookups over {elapsed_s:.1} s, budget {budget:.0}"
    );
    // The merchant's requests never wait for the flood: none near a pool timeout (5 s), and
    // the median as without a flood. (The debug build's in-process stack has spikes of
    // 100-300 ms without any flood, so its p99 says nothing about the flood; the release
    // measurement is in the architecture doc.)
    latencies_ms.sort_by(f64::total_cmp);
    let p50 = latencies_ms[latencies_ms.len() / 2];
    let max = latencies_ms[latencies_ms.len() - 1];
    assert!(
        p50 < 100.0 && max < 1_000.0,
        "merchant API p50 {p50:.1} ms, max {max:.1} ms over {} payments in {elapsed_s:.1} s",
        latencies_ms.len()
    );
    stack.teardown().await;
}

/// A gateway that just started knows no key. A burst of one merchant's requests, far more than
/// the instance's lookup slots (4) and its address's lookup budget, arrives while the key
/// table is slow (locked by the test): it is one database lookup, the first request's, and
/// the rest wait for its answer. None gets 429. Before single flight, every request past the
/// fourth was refused with `too_many_key_lookups` while the first four waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_gateway_answers_a_burst_of_one_valid_key_without_429() {
    let stack = TestStack::spawn_with(StackOptions {
        // The production defaults: 20 lookups a second per address, 100 at once, 4 slots.
        gateway_key_lookups: Some((20, 100)),
        gateway_key_lookups_concurrent: Some(4),
        ..StackOptions::default()
    })
    .await;
    let gateway_db = stack.db("gateway").await;
    let mut lock = gateway_db.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let url = format!("{}/payments/{}", stack.gateway_url(), Uuid::now_v7());
    let answered = Arc::new(AtomicUsize::new(0));
    let burst = tokio::spawn({
        let (http, url, answered) = (stack.http.clone(), url.clone(), answered.clone());
        async move {
            futures::stream::iter(0..BURST)
                .map(|_| {
                    let (http, url, answered) = (http.clone(), url.clone(), answered.clone());
                    async move {
                        let status = http
                            .get(&url)
                            .header("x-api-key", DEV_API_KEY)
                            .send()
                            .await
                            .expect("GET")
                            .status()
                            .as_u16();
                        answered.fetch_add(1, Ordering::SeqCst);
                        status
                    }
                })
                .buffer_unordered(BURST)
                .collect::<Vec<u16>>()
                .await
        }
    });
    // The first lookup waits on the lock; the burst arrives meanwhile (a request arriving
    // after the lock is gone finds the key cached, which decides nothing either way, so the
    // lock is held until every request of the burst is in).
    sagapay_e2e::eventually(
        std::time::Duration::from_secs(20),
        "a key lookup waiting on the locked table",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                  WHERE c.relname = 'api_keys' AND NOT l.granted",
            )
            .fetch_one(&gateway_db)
            .await
            .ok()?;
            (waiting > 0).then_some(())
        },
    )
    .await;
    // In: the gateway holds a connection for each request and has read every byte sent on
    // them (each request is with its handler, waiting for the one lookup). Or answered while
    // the table is locked, which only a refusal can be: the assertions below say which.
    let port = url::Url::parse(&stack.gateway_url())
        .unwrap()
        .port()
        .unwrap();
    sagapay_e2e::eventually(
        std::time::Duration::from_secs(20),
        "every request of the burst read by the gateway, or one answered",
        || async {
            let (connections, unread) = gateway_connections(port);
            (answered.load(Ordering::SeqCst) > 0 || (connections >= BURST && unread == 0))
                .then_some(())
        },
    )
    .await;
    lock.rollback().await.unwrap();
    let statuses = burst.await.unwrap();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        refused, 0,
        "429s for a valid key on a cold gateway: {refused} of {BURST}"
    );
    assert!(
        statuses.iter().all(|s| *s == 404),
        "every request was authenticated and reached the route"
    );
    stack.teardown().await;
}
