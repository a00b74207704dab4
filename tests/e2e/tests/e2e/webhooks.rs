//! Webhooks on the real stack with real HTTP receivers: signed with the endpoint's secret,
//! each subscribed event once per endpoint (again only after a failed attempt, with the same
//! id), retried after a 500, undelayed by a receiver that hangs, signed with both secrets
//! during a roll; the same events listed by `GET /events`, never another merchant's.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sagapay_e2e::{eventually, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    body: String,
    at: Instant,
}

impl Received {
    fn event(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON event")
    }
}

/// How a receiver's path answers: `ok` 200; `flaky` 500 to the first request for each event,
/// then 200; `down` always 500; `hang` never answers.
#[derive(Default)]
struct Receiver {
    requests: Mutex<HashMap<String, Vec<Received>>>,
}

impl Receiver {
    fn of(&self, path: &str) -> Vec<Received> {
        self.requests
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let received = Received {
        signature: headers
            .get("sagapay-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body,
        at: Instant::now(),
    };
    let id = received.event()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let seen_before = {
        let mut map = rx.requests.lock().unwrap();
        let list = map.entry(path.clone()).or_default();
        let seen = list.iter().any(|r| r.event()["id"] == id.as_str());
        list.push(received);
        seen
    };
    match path.as_str() {
        "flaky" if !seen_before => StatusCode::INTERNAL_SERVER_ERROR,
        "down" => StatusCode::INTERNAL_SERVER_ERROR,
        "hang" => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            StatusCode::OK
        }
        _ => StatusCode::OK,
    }
}

/// A receiver on an ephemeral loopback port: its base URL.
async fn start_receiver(rx: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/{path}", post(receive))
        .with_state(rx);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The receiver's own check of `SagaPay-Signature`, written here from the documented scheme
/// rather than with the service's code.
fn signed_with(signature: &str, secret: &str, body: &str) -> bool {
    let t = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .expect("t=");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    signature
        .split(',')
        .filter_map(|p| p.strip_prefix("v1="))
        .any(|v| v == expected)
}

async fn call(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = stack
        .http
        .request(method, format!("{}{path}", stack.gateway_url()))
        .header("x-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn register(stack: &TestStack, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) = call(
        stack,
        reqwest::Method::POST,
        "/webhook_endpoints",
        DEV_API_KEY,
        Some(json!({ "url": url, "enabled_events": events })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    (body["id"].as_str().unwrap().to_owned(), secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_delivered_once_retried_and_listed() {
    let stack = TestStack::spawn().await;
    let rx = Arc::new(Receiver::default());
    let base = start_receiver(rx.clone()).await;
    let notification = stack.db("notification").await;
    let endpoints =
        || async { count(&notification, "SELECT count(*) FROM webhook_endpoints").await };

    // Refused at the edge, nothing written.
    for (body, code) in [
        (
            json!({"url": "ftp://x.example/", "enabled_events": ["payment.settled"]}),
            "invalid_url",
        ),
        (
            json!({"url": format!("{base}/ok"), "enabled_events": ["payment.exploded"]}),
            "invalid_enabled_events",
        ),
        (
            json!({"url": format!("{base}/ok"), "enabled_events": []}),
            "invalid_enabled_events",
        ),
        (json!({"url": format!("{base}/ok")}), "missing_field"),
    ] {
        let (status, err) = call(
            &stack,
            reqwest::Method::POST,
            "/webhook_endpoints",
            DEV_API_KEY,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {err}"
        );
    }
    assert_eq!(endpoints().await, 0);

    // The hanging endpoint first, so it is claimed alongside the others.
    let (_, _hang_secret) = register(&stack, &format!("{base}/hang"), &["payment.settled"]).await;
    let (ok_id, ok_secret) = register(
        &stack,
        &format!("{base}/ok"),
        &["payment.settled", "payment.failed"],
    )
    .await;
    let (flaky_id, flaky_secret) =
        register(&stack, &format!("{base}/flaky"), &["payment.settled"]).await;
    let (status, listed) = call(
        &stack,
        reqwest::Method::GET,
        "/webhook_endpoints",
        DEV_API_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    assert!(
        !listed.to_string().contains("whsec_"),
        "secrets are shown once: {listed}"
    );

    let mut settled = Vec::new();
    for i in 0..3 {
        settled.push(
            stack
                .settled_payment(&format!("wh-{i}"), 1000 + i, "USD")
                .await,
        );
    }
    let failed = stack
        .create_payment_id(
            json!({"customer_id": "cust-wh-f", "amount_cents": 500, "currency": "USD",
            "idempotency_key": "wh-f", "payment_method": "pm_card_declined"}),
        )
        .await;
    stack
        .wait_for_status(&failed, "FAILED", Duration::from_secs(40))
        .await;

    // The flaky endpoint gets each event twice: a 500, then the same event again.
    eventually(Duration::from_secs(30), "flaky retried", || async {
        (rx.of("flaky").len() >= 6).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "ok received", || async {
        (rx.of("ok").len() >= 4).then_some(())
    })
    .await;
    // Every delivery of the two settled: nothing more will come (the hanging one aside).
    eventually(Duration::from_secs(30), "deliveries settled", || async {
        let pending = count(
            &notification,
            "SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id)
              WHERE d.status = 'PENDING' AND e.url NOT LIKE '%/hang'",
        )
        .await;
        (pending == 0).then_some(())
    })
    .await;

    let ok = rx.of("ok");
    assert_eq!(ok.len(), 4, "each subscribed event once: {ok:?}");
    let mut by_payment: HashMap<String, String> = HashMap::new();
    for r in &ok {
        assert!(
            signed_with(&r.signature, &ok_secret, &r.body),
            "signed with its secret"
        );
        assert!(
            !signed_with(&r.signature, &flaky_secret, &r.body),
            "not with another's"
        );
        let ev = r.event();
        assert!(ev["id"].as_str().unwrap().starts_with("evt_"));
        assert!(ev["created"].as_i64().unwrap() > 1_700_000_000);
        let pid = ev["data"]["object"]["payment_id"]
            .as_str()
            .unwrap()
            .to_owned();
        by_payment.insert(pid, ev["type"].as_str().unwrap().to_owned());
    }
    for pid in &settled {
        assert_eq!(
            by_payment.get(pid).map(String::as_str),
            Some("payment.settled")
        );
    }
    assert_eq!(
        by_payment.get(&failed).map(String::as_str),
        Some("payment.failed")
    );

    let flaky = rx.of("flaky");
    assert_eq!(
        flaky.len(),
        6,
        "three events, each failed once and sent again: {flaky:?}"
    );
    let mut ids: HashMap<String, usize> = HashMap::new();
    for r in &flaky {
        assert!(signed_with(&r.signature, &flaky_secret, &r.body));
        *ids.entry(r.event()["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        ids.values().all(|&n| n == 2),
        "the repeat carries the same id: {ids:?}"
    );

    // The hanging receiver delayed no one: each event reached `ok` while the hanging
    // endpoint's attempt at it was still waiting for its 2 s timeout.
    let hang = rx.of("hang");
    for r in ok.iter().filter(|r| r.event()["type"] == "payment.settled") {
        let id = r.event()["id"].clone();
        let stuck = hang
            .iter()
            .find(|h| h.event()["id"] == id)
            .expect("sent to hang too");
        assert!(
            r.at < stuck.at + Duration::from_millis(1_500),
            "ok waited {:?} behind hang",
            r.at.saturating_duration_since(stuck.at)
        );
    }

    // What merchants see of it: deliveries with attempts and answers, and the events.
    let (status, deliveries) = call(
        &stack,
        reqwest::Method::GET,
        &format!("/webhook_endpoints/{flaky_id}/deliveries"),
        DEV_API_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200, "{deliveries}");
    let listed = deliveries["data"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        3,
        "one delivery per settled payment: {deliveries}"
    );
    for d in listed {
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("delivered"), Some(2)),
            "{d}"
        );
        assert_eq!(d["last_status_code"], 200);
    }
    let (status, events) = call(
        &stack,
        reqwest::Method::GET,
        "/events?limit=100",
        DEV_API_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = events["data"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 4, "{events}");
    for r in &ok {
        let ev = r.event();
        assert!(
            listed.contains(&ev),
            "GET /events has what was delivered: {ev}"
        );
        let (status, one) = call(
            &stack,
            reqwest::Method::GET,
            &format!("/events/{}", ev["id"].as_str().unwrap()),
            DEV_API_KEY,
            None,
        )
        .await;
        assert_eq!((status, &one), (200, &ev));
    }

    // Another merchant sees none of it and can touch none of it.
    let (_, other_key) = stack.merchant("webhook-other").await;
    let (status, theirs) = call(&stack, reqwest::Method::GET, "/events", &other_key, None).await;
    assert_eq!(
        (status, theirs["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let some_id = listed[0]["id"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, format!("/events/{some_id}")),
        (
            reqwest::Method::DELETE,
            format!("/webhook_endpoints/{ok_id}"),
        ),
        (
            reqwest::Method::GET,
            format!("/webhook_endpoints/{ok_id}/deliveries"),
        ),
        (
            reqwest::Method::POST,
            format!("/webhook_endpoints/{ok_id}/roll_secret"),
        ),
    ] {
        let (status, _) = call(&stack, method.clone(), &path, &other_key, None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, theirs) = call(
        &stack,
        reqwest::Method::GET,
        "/webhook_endpoints",
        &other_key,
        None,
    )
    .await;
    assert_eq!(
        (status, theirs["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "another merchant lists none of these endpoints: {theirs}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_secret_signs_beside_the_new_one_and_deleted_endpoints_receive_nothing() {
    let stack = TestStack::spawn().await;
    let rx = Arc::new(Receiver::default());
    let base = start_receiver(rx.clone()).await;
    let (id, old_secret) = register(&stack, &format!("{base}/ok"), &["payment.settled"]).await;
    let (gone_id, _) = register(&stack, &format!("{base}/gone"), &["payment.settled"]).await;
    let (status, _) = call(
        &stack,
        reqwest::Method::DELETE,
        &format!("/webhook_endpoints/{gone_id}"),
        DEV_API_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, rolled) = call(
        &stack,
        reqwest::Method::POST,
        &format!("/webhook_endpoints/{id}/roll_secret"),
        DEV_API_KEY,
        Some(json!({"expires_in_s": 3600})),
    )
    .await;
    assert_eq!(status, 200, "{rolled}");
    let new_secret = rolled["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    let (status, err) = call(
        &stack,
        reqwest::Method::POST,
        &format!("/webhook_endpoints/{id}/roll_secret"),
        DEV_API_KEY,
        Some(json!({"expires_in_s": 30 * 86_400})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_expires_in_s"))
    );

    stack.settled_payment("roll-1", 700, "EUR").await;
    eventually(Duration::from_secs(30), "the event", || async {
        (!rx.of("ok").is_empty()).then_some(())
    })
    .await;
    let r = &rx.of("ok")[0];
    assert_eq!(r.signature.matches("v1=").count(), 2, "{}", r.signature);
    assert!(signed_with(&r.signature, &new_secret, &r.body));
    assert!(signed_with(&r.signature, &old_secret, &r.body));
    assert!(!signed_with(&r.signature, "whsec_someone_else", &r.body));
    // Only once nothing is in flight or waiting: a delivery to the deleted endpoint a moment
    // after the first arrived would otherwise pass unseen.
    stack.wait_quiet().await;
    let notification_db = stack.db("notification").await;
    eventually(Duration::from_secs(30), "no delivery waiting", || async {
        let pending = count(
            &notification_db,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING'",
        )
        .await;
        (pending == 0).then_some(())
    })
    .await;
    assert!(
        rx.of("gone").is_empty(),
        "a deleted endpoint received an event"
    );

    // An operator sends it again (sagapayctl webhooks resend): the same event arrives again.
    let notification = stack.db("notification").await;
    let listed = sagapay_notification::ops::list(
        &notification,
        &sagapay_notification::ops::Filter {
            status: Some("delivered".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].last_status_code, Some(200));
    assert!(
        sagapay_notification::ops::resend(&notification, listed[0].delivery_id)
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(30), "the event again", || async {
        (rx.of("ok").len() == 2).then_some(())
    })
    .await;
    let again = &rx.of("ok")[1];
    assert_eq!(again.event()["id"], r.event()["id"]);
    assert!(
        !sagapay_notification::ops::resend(&notification, uuid::Uuid::now_v7())
            .await
            .unwrap(),
        "no such delivery"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_failing_for_too_long_is_disabled_and_gets_no_more_events() {
    let stack = TestStack::spawn_with(sagapay_e2e::StackOptions {
        webhooks: Some(sagapay_notification::WebhookSettings {
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_millis(400),
            disable_after: Duration::from_secs(1),
            ..sagapay_notification::WebhookSettings::for_test()
        }),
        ..Default::default()
    })
    .await;
    let rx = Arc::new(Receiver::default());
    let base = start_receiver(rx.clone()).await;
    let (down_id, _) = register(&stack, &format!("{base}/down"), &["payment.settled"]).await;
    stack.settled_payment("down-1", 100, "USD").await;
    let endpoint = eventually(Duration::from_secs(30), "the endpoint disabled", || async {
        let (_, listed) = call(
            &stack,
            reqwest::Method::GET,
            "/webhook_endpoints",
            DEV_API_KEY,
            None,
        )
        .await;
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == down_id.as_str() && e["status"] == "disabled")
            .cloned()
    })
    .await;
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .starts_with("no successful delivery since"),
        "{endpoint}"
    );
    assert!(rx.of("down").len() >= 2, "retried before it was disabled");
    // Counted once its transaction committed, a moment after the endpoint reads disabled.
    eventually(
        Duration::from_secs(10),
        "the disabled endpoint counted",
        || async {
            let n = stack
                .metric(
                    "notification",
                    "webhook_endpoints_disabled_total{reason=\"failing\",service=\"notification\"}",
                )
                .await;
            (n == 1.0).then_some(())
        },
    )
    .await;
    // A later event is recorded for the merchant but not queued for the disabled endpoint.
    stack.settled_payment("down-2", 200, "USD").await;
    let notification = stack.db("notification").await;
    eventually(Duration::from_secs(30), "the second event", || async {
        (count(&notification, "SELECT count(*) FROM merchant_events").await == 2).then_some(())
    })
    .await;
    assert_eq!(
        count(&notification, "SELECT count(*) FROM webhook_deliveries").await,
        1,
        "a delivery for a disabled endpoint"
    );
    stack.teardown().await;
}

/// The receiver as an HTTPS server with `cert`, serving the same paths as `start_receiver`.
async fn start_https_receiver(rx: Arc<Receiver>, cert: &sagapay_e2e::tls::ServerCert) -> String {
    let app = axum::Router::new()
        .route("/{path}", post(receive))
        .with_state(rx);
    sagapay_e2e::tls::serve_https(app, cert).await
}

/// Deliveries over https (production allows nothing else; the client had no TLS at all, so
/// every delivery failed). The receiver's certificate is signed by a CA of the test's own,
/// trusted through `SAGAPAY_WEBHOOK_CA_FILE`: the event is delivered and its signature
/// verifies. A second receiver presents a certificate of a CA nobody trusts: each attempt
/// fails, and the delivery says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_delivered_over_https_and_an_unverified_receiver_fails_with_its_reason() {
    let dir = std::env::temp_dir().join(format!("sagapay-webhook-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = sagapay_e2e::tls::TestCa::new("webhook receivers' CA");
    let stranger = sagapay_e2e::tls::TestCa::new("a CA nobody trusts");
    let stack = TestStack::spawn_with(sagapay_e2e::StackOptions {
        webhooks: Some(sagapay_notification::WebhookSettings {
            ca_file: Some(ca.write(&dir, "ca.pem")),
            ..sagapay_notification::WebhookSettings::for_test()
        }),
        ..Default::default()
    })
    .await;
    let trusted = Arc::new(Receiver::default());
    let trusted_base =
        start_https_receiver(trusted.clone(), &ca.server(&["127.0.0.1", "localhost"])).await;
    let untrusted = Arc::new(Receiver::default());
    let untrusted_base =
        start_https_receiver(untrusted.clone(), &stranger.server(&["127.0.0.1"])).await;
    assert!(trusted_base.starts_with("https://"), "{trusted_base}");
    let (_, secret) = register(&stack, &format!("{trusted_base}/ok"), &["payment.settled"]).await;
    let (untrusted_id, _) = register(
        &stack,
        &format!("{untrusted_base}/ok"),
        &["payment.settled"],
    )
    .await;

    let pid = stack.settled_payment("wh-tls", 1_234, "USD").await;
    let got = eventually(Duration::from_secs(30), "the https delivery", || async {
        trusted.of("ok").into_iter().next()
    })
    .await;
    assert!(signed_with(&got.signature, &secret, &got.body), "{got:?}");
    assert_eq!(got.event()["data"]["object"]["payment_id"], pid.as_str());

    let failure = eventually(
        Duration::from_secs(30),
        "a failed https attempt",
        || async {
            let (status, body) = call(
                &stack,
                reqwest::Method::GET,
                &format!("/webhook_endpoints/{untrusted_id}/deliveries"),
                DEV_API_KEY,
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let d = body["data"].as_array()?.first()?.clone();
            d["last_error"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(
        failure.to_ascii_lowercase().contains("certificate"),
        "the reason names the certificate: {failure}"
    );
    assert!(
        untrusted.of("ok").is_empty(),
        "nothing reached the unverified receiver"
    );
    stack.teardown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// One merchant with 16 endpoints that never answer, and events enough to fill every one of
/// them, holds at most its share of an instance's deliveries (16 of 64): another merchant's
/// delivery goes out at once, not after the first merchant's deliveries time out. Before the
/// bound per merchant, the first merchant's 16 endpoints took all 64 slots (4 each).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_merchant_with_many_slow_endpoints_does_not_hold_up_another_merchants_deliveries() {
    let stack = TestStack::spawn_with(sagapay_e2e::StackOptions {
        webhooks: Some(sagapay_notification::WebhookSettings {
            // Slow receivers hold their slot this long.
            timeout: Duration::from_secs(60),
            ..sagapay_notification::WebhookSettings::for_test()
        }),
        ..Default::default()
    })
    .await;
    let rx = Arc::new(Receiver::default());
    let base = start_receiver(rx.clone()).await;
    for _ in 0..16 {
        register(&stack, &format!("{base}/hang"), &["payment.settled"]).await;
    }
    let (_, key_b) = stack.merchant("webhook-merchant-b").await;
    let (status, body) = call(
        &stack,
        reqwest::Method::POST,
        "/webhook_endpoints",
        &key_b,
        Some(json!({ "url": format!("{base}/ok"), "enabled_events": ["payment.settled"] })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Five settled payments of the first merchant: 80 deliveries to slow endpoints.
    for i in 0..5 {
        stack
            .settled_payment(&format!("wh-slow-{i}"), 1_000 + i, "USD")
            .await;
    }
    eventually(
        Duration::from_secs(30),
        "the slow endpoints busy",
        || async { (rx.of("hang").len() >= 16).then_some(()) },
    )
    .await;
    let resp = stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", &key_b)
        .json(
            &json!({"customer_id": "cust-b", "amount_cents": 700, "currency": "USD",
                      "idempotency_key": "wh-b"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started = Instant::now();
    eventually(
        Duration::from_secs(20),
        "the other merchant's delivery, while the slow ones hang",
        || async { (!rx.of("ok").is_empty()).then_some(()) },
    )
    .await;
    let hanging = rx.of("hang").len();
    assert!(
        hanging <= 16,
        "the slow merchant held at most 16 deliveries at once: {hanging} requests reached it"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    stack.teardown().await;
}
