//! The public edge: merchants and keys (through `sagapayctl`), ownership, the Redis idempotency
//! fast path and its durable fallback, the error shape of every refusal, generated hostile
//! input, and the OpenAPI document.

use reqwest::StatusCode;
use sagapay_e2e::servers::RedisServer;
use sagapay_e2e::{
    config, eventually, free_port, target_binary, StackOptions, TestStack, DEV_API_KEY, DEV_OPS_KEY,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// One answer of the gateway.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Every refusal has the one error shape, with the request id of its `x-request-id`.
    fn assert_error_shape(&self, what: &str) {
        let e = &self.body["error"];
        assert!(
            e["type"].is_string() && e["code"].is_string() && e["message"].is_string(),
            "{what}: not the error shape: {} {}",
            self.status,
            self.body
        );
        assert!(
            e.get("param").is_some(),
            "{what}: error without a param key: {}",
            self.body
        );
        let request_id = self.headers["x-request-id"].to_str().unwrap();
        assert_eq!(self.body["request_id"], request_id, "{what}");
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{status}: body is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

fn pay(
    stack: &TestStack,
    api_key: &str,
    idempotency_key: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", api_key)
        .header("idempotency-key", idempotency_key)
        .json(body)
}

fn get_payment(stack: &TestStack, api_key: &str, payment_id: &str) -> reqwest::RequestBuilder {
    stack
        .http
        .get(format!("{}/payments/{payment_id}", stack.gateway_url()))
        .header("x-api-key", api_key)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Runs `sagapayctl` against the stack's namespace; its standard output.
fn sagapayctl(stack: &TestStack, args: &[&str]) -> String {
    let out = Command::new(target_binary("sagapayctl"))
        .args(args)
        .env("SAGAPAY_NAMESPACE", stack.ns.as_str())
        .env("SAGAPAY_POSTGRES_URL", sagapay_e2e::postgres_server_url())
        .output()
        .expect("run sagapayctl");
    assert!(
        out.status.success(),
        "sagapayctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merchants_see_only_their_own_payments_and_revoked_keys_stop_within_a_second() {
    let stack = TestStack::spawn().await;
    let created: Value = serde_json::from_str(&sagapayctl(
        &stack,
        &["merchant", "create", "acme", "--json"],
    ))
    .unwrap();
    let acme_key = created["key"]["secret"].as_str().unwrap().to_owned();
    let acme_id = created["merchant"]["merchant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_globex_id, globex_key) = stack.merchant("globex").await;

    // Only the key's digest is stored.
    let gateway_db = stack.db("gateway").await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE merchant_id = $1::uuid")
            .bind(&acme_id)
            .fetch_one(&gateway_db)
            .await
            .unwrap();
    assert_eq!(stored, sagapay_gateway::auth::hash_key(&acme_key));

    let body = json!({"customer_id": "cust-own", "amount_cents": 2500, "currency": "USD"});
    let a = send(pay(&stack, &acme_key, "order-1", &body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let payment_id = a.body["payment_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "acme's payment settles", || {
        let req = get_payment(&stack, &acme_key, &payment_id);
        async { (send(req).await.body["status"] == "SETTLED").then_some(()) }
    })
    .await;

    // The owner sees it; everyone else is told it does not exist, on every route.
    let own = send(get_payment(&stack, &acme_key, &payment_id)).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["payment_id"], payment_id.as_str());
    for other in [globex_key.as_str(), DEV_API_KEY] {
        let seen = send(get_payment(&stack, other, &payment_id)).await;
        assert_eq!(seen.status, StatusCode::NOT_FOUND);
        assert_eq!(seen.code(), "payment_not_found");
        seen.assert_error_shape("another merchant's payment");
        let refund = send(
            stack
                .http
                .post(format!(
                    "{}/payments/{payment_id}/refunds",
                    stack.gateway_url()
                ))
                .header("x-api-key", other)
                .header("idempotency-key", "refund-1")
                .json(&json!({"amount_cents": 100})),
        )
        .await;
        assert_eq!(refund.status, StatusCode::NOT_FOUND, "{}", refund.body);
        assert_eq!(refund.code(), "payment_not_found");
    }
    // Idempotency keys are scoped to the merchant: globex's "order-1" is its own payment.
    let g = send(pay(&stack, &globex_key, "order-1", &body)).await;
    assert_eq!(g.status, StatusCode::CREATED);
    assert_ne!(g.body["payment_id"], payment_id.as_str());
    assert!(g.headers.get("idempotent-replayed").is_none());

    // Missing, unknown, and the risk service's ops key: 401 with the error shape.
    for (what, key) in [
        ("no key", None),
        ("unknown key", Some("sk_not_a_key")),
        ("the ops key", Some(DEV_OPS_KEY)),
    ] {
        let mut req = stack
            .http
            .get(format!("{}/payments/{payment_id}", stack.gateway_url()));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let refused = send(req).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(refused.code(), "invalid_api_key", "{what}");
        refused.assert_error_shape(what);
    }

    // A second key works beside the first; listing shows prefixes, never keys.
    let second: Value =
        serde_json::from_str(&sagapayctl(&stack, &["key", "create", "acme", "--json"])).unwrap();
    let second_key = second["secret"].as_str().unwrap().to_owned();
    let second_id = second["key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        send(get_payment(&stack, &second_key, &payment_id))
            .await
            .status,
        StatusCode::OK
    );
    let listing = sagapayctl(&stack, &["key", "list", "acme"]);
    assert!(listing.contains(&second_key[..8]), "{listing}");
    assert!(!listing.contains(&second_key) && !listing.contains(&acme_key));

    // Revoked: refused within a second (the gateway trusts a key it found for at most that
    // long), and for good; the other key still works.
    sagapayctl(&stack, &["key", "revoke", &second_id]);
    let revoked_at = std::time::Instant::now();
    loop {
        let status = send(get_payment(&stack, &second_key, &payment_id))
            .await
            .status;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_millis(1_500),
            "a revoked key still works after {:?}",
            revoked_at.elapsed()
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..3 {
        let again = send(get_payment(&stack, &second_key, &payment_id)).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        send(get_payment(&stack, &acme_key, &payment_id))
            .await
            .status,
        StatusCode::OK
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_requests_make_one_payment() {
    let stack = Arc::new(TestStack::spawn().await);
    let body = json!({"customer_id": "cust-burst", "amount_cents": 1234, "currency": "EUR"});
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (stack, barrier, body) = (stack.clone(), barrier.clone(), body.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(pay(&stack, DEV_API_KEY, "burst-1", &body)).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let (mut created, mut in_flight) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::CREATED => {
                created += 1;
                ids.insert(a.body["payment_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                in_flight += 1;
                assert_eq!(a.code(), "idempotency_request_in_progress");
                assert_eq!(a.headers["retry-after"], "1");
                a.assert_error_shape("in flight");
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert!(created >= 1, "no request was answered 201");
    assert_eq!(
        ids.len(),
        1,
        "identical requests answered different payments: {ids:?}"
    );
    assert_eq!(created + in_flight, 50);
    let orchestrator = stack.db("orchestrator").await;
    assert_eq!(
        count(
            &orchestrator,
            "SELECT count(*) FROM payments WHERE idempotency_key = 'burst-1'"
        )
        .await,
        1
    );
    // At most one request was forwarded under a Redis claim (the NX claim admits one).
    assert!(
        stack
            .metric(
                "gateway",
                "idempotency_requests_total{outcome=\"claimed\",service=\"gateway\"}"
            )
            .await
            <= 1.0
    );

    // A retry after the fact gets the first answer, replayed from Redis. (Retried until a
    // replay is counted: on a starved machine one Redis call may time out and take the durable
    // path, which answers the same.)
    let payment_id = ids.into_iter().next().unwrap();
    eventually(
        Duration::from_secs(10),
        "a retry replayed from Redis",
        || {
            let req = pay(&stack, DEV_API_KEY, "burst-1", &body);
            let (stack, payment_id) = (&stack, &payment_id);
            async move {
                let retry = send(req).await;
                assert_eq!(retry.status, StatusCode::CREATED);
                assert_eq!(retry.body["payment_id"], payment_id.as_str());
                assert_eq!(retry.headers["idempotent-replayed"], "true");
                let replayed = stack
                    .metric(
                        "gateway",
                        "idempotency_requests_total{outcome=\"replayed\",service=\"gateway\"}",
                    )
                    .await;
                (replayed >= 1.0).then_some(())
            }
        },
    )
    .await;
    // The same key with another body: 422, and still one payment.
    let reused = send(pay(
        &stack,
        DEV_API_KEY,
        "burst-1",
        &json!({"customer_id": "cust-burst", "amount_cents": 999, "currency": "EUR"}),
    ))
    .await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.code(), "idempotency_key_reused");
    reused.assert_error_shape("reused key");
    assert_eq!(
        count(
            &orchestrator,
            "SELECT count(*) FROM payments WHERE idempotency_key = 'burst-1'"
        )
        .await,
        1
    );
    Arc::into_inner(stack)
        .expect("no other owner")
        .teardown()
        .await;
}

/// A Redis of this test's own, so that stopping it disturbs no other test.
fn own_redis(port: u16) -> RedisServer {
    tokio::task::block_in_place(|| RedisServer::start(port)).expect("a Redis of the test's own")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_stopped_payments_are_still_created_once() {
    let port = free_port(30_000..32_000);
    let redis = own_redis(port);
    let stack = TestStack::spawn_with(StackOptions {
        gateway_redis_url: Some(format!("redis://127.0.0.1:{port}")),
        ..StackOptions::default()
    })
    .await;
    let body =
        |customer: &str| json!({"customer_id": customer, "amount_cents": 700, "currency": "GBP"});
    let metric = |outcome: &'static str| {
        let stack = &stack;
        async move {
            stack
                .metric(
                    "gateway",
                    &format!(
                        "idempotency_requests_total{{outcome=\"{outcome}\",service=\"gateway\"}}"
                    ),
                )
                .await
        }
    };

    // Redis up: a retry is replayed from Redis.
    let a = send(pay(&stack, DEV_API_KEY, "k-a", &body("cust-a"))).await;
    assert_eq!(a.status, StatusCode::CREATED);
    eventually(
        Duration::from_secs(10),
        "a retry replayed from Redis",
        || {
            let req = pay(&stack, DEV_API_KEY, "k-a", &body("cust-a"));
            let (a, metric) = (&a, &metric);
            async move {
                assert_eq!(send(req).await.body["payment_id"], a.body["payment_id"]);
                (metric("replayed").await >= 1.0).then_some(())
            }
        },
    )
    .await;
    let claimed_before = metric("claimed").await;
    let unavailable = || {
        let stack = &stack;
        async move {
            stack
                .metric(
                    "gateway",
                    "idempotency_redis_unavailable_total{service=\"gateway\"}",
                )
                .await
        }
    };
    let (durable_before, unavailable_before) = (metric("durable").await, unavailable().await);

    drop(redis);

    // Redis down: new payments, retries and concurrent duplicates all go the durable path.
    let b = send(pay(&stack, DEV_API_KEY, "k-b", &body("cust-b"))).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    let b_again = send(pay(&stack, DEV_API_KEY, "k-b", &body("cust-b"))).await;
    assert_eq!(b_again.status, StatusCode::CREATED);
    assert_eq!(b_again.body["payment_id"], b.body["payment_id"]);
    assert_eq!(b_again.headers["idempotent-replayed"], "true");
    let a_retry = send(pay(&stack, DEV_API_KEY, "k-a", &body("cust-a"))).await;
    assert_eq!(a_retry.body["payment_id"], a.body["payment_id"]);
    let b_reused = send(pay(&stack, DEV_API_KEY, "k-b", &body("cust-other"))).await;
    assert_eq!(b_reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b_reused.code(), "idempotency_key_reused");
    let burst = futures::future::join_all(
        (0..10).map(|_| send(pay(&stack, DEV_API_KEY, "k-c", &body("cust-c")))),
    )
    .await;
    let c_ids: BTreeSet<String> = burst
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["payment_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(c_ids.len(), 1, "{c_ids:?}");
    // Each of the 14 requests while Redis was down went the durable path, counted once.
    assert_eq!(metric("durable").await, durable_before + 14.0);
    assert_eq!(unavailable().await, unavailable_before + 14.0);
    assert_eq!(
        metric("claimed").await,
        claimed_before,
        "nothing claimed while Redis was down"
    );

    let orchestrator = stack.db("orchestrator").await;
    assert_eq!(
        count(&orchestrator, "SELECT count(*) FROM payments").await,
        3
    );
    for p in [&a, &b] {
        stack
            .wait_for_status(
                p.body["payment_id"].as_str().unwrap(),
                "SETTLED",
                Duration::from_secs(30),
            )
            .await;
    }

    // Redis back: the fast path resumes by itself.
    let redis = own_redis(port);
    let mut n = 0;
    eventually(
        Duration::from_secs(15),
        "the fast path claims again",
        || {
            n += 1;
            let req = pay(
                &stack,
                DEV_API_KEY,
                &format!("k-back-{n}"),
                &body("cust-back"),
            );
            async {
                assert_eq!(send(req).await.status, StatusCode::CREATED);
                (metric("claimed").await > claimed_before).then_some(())
            }
        },
    )
    .await;
    drop(redis);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_has_the_error_shape() {
    let stack = TestStack::spawn().await;
    let url = stack.gateway_url();
    let valid = json!({"customer_id": "c1", "amount_cents": 100, "currency": "USD"});
    let big = json!({"customer_id": "x".repeat(20_000), "amount_cents": 1, "currency": "USD"});
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "body over the limit",
            pay(&stack, DEV_API_KEY, "e-1", &big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "text/plain",
            stack
                .http
                .post(format!("{url}/payments"))
                .header("x-api-key", DEV_API_KEY)
                .header("idempotency-key", "e-2")
                .header("content-type", "text/plain")
                .body(valid.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "UTF-16 JSON",
            stack
                .http
                .post(format!("{url}/payments"))
                .header("x-api-key", DEV_API_KEY)
                .header("idempotency-key", "e-3")
                .header("content-type", "application/json; charset=utf-16")
                .body(valid.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "malformed JSON",
            stack
                .http
                .post(format!("{url}/payments"))
                .header("x-api-key", DEV_API_KEY)
                .header("idempotency-key", "e-4")
                .header("content-type", "application/json")
                .body("{\"customer_id\":"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "no idempotency key",
            stack
                .http
                .post(format!("{url}/payments"))
                .header("x-api-key", DEV_API_KEY)
                .json(&valid),
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
        ),
        (
            "unknown route",
            stack.http.get(format!("{url}/no-such-route")),
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
        (
            "wrong method",
            stack
                .http
                .delete(format!("{url}/payments"))
                .header("x-api-key", DEV_API_KEY),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "payment id that is no id",
            get_payment(&stack, DEV_API_KEY, "not-a-uuid"),
            StatusCode::NOT_FOUND,
            "payment_not_found",
        ),
    ];
    for (what, req, status, code) in cases {
        let a = send(req.header("x-correlation-id", format!("corr-{code}"))).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert_eq!(a.code(), code, "{what}");
        a.assert_error_shape(what);
        assert_eq!(
            a.headers["x-correlation-id"],
            format!("corr-{code}").as_str()
        );
    }
    let orchestrator = stack.db("orchestrator").await;
    assert_eq!(
        count(&orchestrator, "SELECT count(*) FROM payments").await,
        0
    );
    stack.teardown().await;
}

/// A small deterministic generator (xorshift), so a failing case can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

type Headers = Vec<(String, Vec<u8>)>;

/// One hostile request: raw body bytes and the headers to send.
struct Hostile {
    label: String,
    path: String,
    body: Vec<u8>,
    headers: Headers,
}

fn hostile_requests() -> Vec<Hostile> {
    let valid = || {
        let mut m = serde_json::Map::new();
        m.insert("customer_id".into(), json!("cust-1"));
        m.insert("amount_cents".into(), json!(100));
        m.insert("currency".into(), json!("USD"));
        m
    };
    let injections = [
        "'; DROP TABLE payments; --",
        "\" OR 1=1 --",
        "<script>alert(1)</script>",
        "${jndi:ldap://127.0.0.1/a}",
        "{{7*7}}",
        "../../etc/passwd",
        "%00",
        "\u{0000}",
        "cust\u{200b}1",
        "\u{202e}1-tsuc",
        "ｃｕｓｔ１",
        "cust\n1",
        "😀",
        "é",
        "",
        " ",
    ];
    let long = "a".repeat(65);
    let field_values: Vec<(&str, Vec<Value>)> = vec![
        (
            "amount_cents",
            vec![
                json!(-1),
                json!(0),
                json!(-0),
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u64::MAX),
                json!(100_000_001),
                json!(1.5),
                json!(100.5),
                json!(1e-3),
                json!("100"),
                json!(null),
                json!(true),
                json!([100]),
                json!({"value": 100}),
                json!("١٠٠"),
            ],
        ),
        (
            "currency",
            vec![
                json!("usd"),
                json!("US"),
                json!("USDD"),
                json!("XXX"),
                json!("XTS"),
                json!("ZZZ"),
                json!(""),
                json!(840),
                json!(null),
                json!("ＵＳＤ"),
                json!("US\u{0000}"),
                json!("USD "),
                json!("U\u{200b}SD"),
                json!(["USD"]),
            ],
        ),
        (
            "customer_id",
            injections
                .iter()
                .map(|s| json!(s))
                .chain([json!(long), json!(42), json!(null), json!(["c"]), json!({})])
                .collect(),
        ),
        (
            "payment_method",
            vec![
                json!(""),
                json!("PM_CARD_OK"),
                json!("pm card"),
                json!("x".repeat(65)),
                json!(7),
                json!(["pm_card_ok"]),
                json!("pm_card_ok'--"),
            ],
        ),
        (
            "idempotency_key",
            vec![
                json!(""),
                json!("k".repeat(256)),
                json!("k\u{7}"),
                json!("ключ"),
                json!(5),
                json!(["k"]),
                json!("other-than-the-header"),
            ],
        ),
    ];
    let mut out = Vec::new();
    let mut push = |label: String, body: Vec<u8>, headers: Vec<(String, Vec<u8>)>| {
        out.push(Hostile {
            label,
            path: "/payments".into(),
            body,
            headers,
        })
    };
    let json_ct = || ("content-type".to_owned(), b"application/json".to_vec());
    let key_header = |k: &str| ("idempotency-key".to_owned(), k.as_bytes().to_vec());
    let api_key = || ("x-api-key".to_owned(), DEV_API_KEY.as_bytes().to_vec());
    // One field at a time, each with the header key and with the key in the body.
    for (field, values) in &field_values {
        for (i, v) in values.iter().enumerate() {
            for key_in_body in [false, true] {
                let mut m = valid();
                m.insert((*field).into(), v.clone());
                let mut headers = vec![api_key(), json_ct()];
                if key_in_body && *field != "idempotency_key" {
                    m.insert("idempotency_key".into(), json!(format!("h-{field}-{i}")));
                } else {
                    headers.push(key_header(&format!("h-{field}-{i}")));
                }
                push(
                    format!("{field}={v} (key in body: {key_in_body})"),
                    Value::Object(m).to_string().into_bytes(),
                    headers,
                );
            }
        }
    }
    // Fields missing, unknown, or trying to set what the platform decides.
    for (i, extra) in [
        ("merchant_id", json!(Uuid::now_v7())),
        ("status", json!("SETTLED")),
        ("payment_id", json!(Uuid::now_v7())),
        ("amount", json!(100)),
        ("__proto__", json!({"admin": true})),
        ("constructor", json!({})),
        ("Customer_id", json!("cust-1")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = valid();
        m.insert(extra.0.into(), extra.1);
        push(
            format!("extra field {}", extra.0),
            Value::Object(m).to_string().into_bytes(),
            vec![api_key(), json_ct(), key_header(&format!("x-{i}"))],
        );
    }
    for missing in ["customer_id", "amount_cents", "currency"] {
        let mut m = valid();
        m.remove(missing);
        push(
            format!("missing {missing}"),
            Value::Object(m).to_string().into_bytes(),
            vec![api_key(), json_ct(), key_header(&format!("m-{missing}"))],
        );
    }
    // Bodies that are not one JSON object.
    let valid_text = Value::Object(valid()).to_string();
    let structural: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("whitespace".into(), b"   \n".to_vec()),
        ("null".into(), b"null".to_vec()),
        ("array".into(), format!("[{valid_text}]").into_bytes()),
        ("string".into(), b"\"{}\"".to_vec()),
        ("number".into(), b"100".to_vec()),
        (
            "truncated".into(),
            valid_text.as_bytes()[..valid_text.len() - 1].to_vec(),
        ),
        (
            "two objects".into(),
            format!("{valid_text}{valid_text}").into_bytes(),
        ),
        (
            "trailing garbage".into(),
            format!("{valid_text}x").into_bytes(),
        ),
        (
            "BOM".into(),
            [b"\xef\xbb\xbf".as_slice(), valid_text.as_bytes()].concat(),
        ),
        (
            "invalid UTF-8".into(),
            br#"{"customer_id":"c\xff","amount_cents":100,"currency":"USD"}"#.to_vec(),
        ),
        (
            "duplicate key".into(),
            br#"{"customer_id":"c","amount_cents":-1,"amount_cents":100,"currency":"USD"}"#
                .to_vec(),
        ),
        (
            "deep nesting".into(),
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        (
            "deep object".into(),
            format!(
                "{{\"customer_id\":{}1{}}}",
                "{\"a\":".repeat(300),
                "}".repeat(300)
            )
            .into_bytes(),
        ),
        (
            "NaN".into(),
            br#"{"customer_id":"c","amount_cents":NaN,"currency":"USD"}"#.to_vec(),
        ),
        (
            "comment".into(),
            br#"{"customer_id":"c",/*x*/"amount_cents":1,"currency":"USD"}"#.to_vec(),
        ),
        (
            "single quotes".into(),
            b"{'customer_id':'c','amount_cents':1,'currency':'USD'}".to_vec(),
        ),
        (
            "huge number".into(),
            format!(
                "{{\"customer_id\":\"c\",\"amount_cents\":{},\"currency\":\"USD\"}}",
                "9".repeat(400)
            )
            .into_bytes(),
        ),
        (
            "oversized".into(),
            format!(
                "{{\"customer_id\":\"{}\",\"amount_cents\":1,\"currency\":\"USD\"}}",
                "a".repeat(70_000)
            )
            .into_bytes(),
        ),
        ("oversized 200 KiB".into(), vec![b' '; 200 << 10]),
    ];
    for (i, (label, body)) in structural.into_iter().enumerate() {
        push(
            label,
            body,
            vec![api_key(), json_ct(), key_header(&format!("s-{i}"))],
        );
    }
    // Headers: keys, content types, idempotency keys; each with an otherwise valid body.
    let header_cases: Vec<(String, Headers)> = vec![
        ("no API key".into(), vec![json_ct(), key_header("hd-1")]),
        (
            "empty API key".into(),
            vec![("x-api-key".into(), vec![]), json_ct(), key_header("hd-2")],
        ),
        (
            "wrong API key".into(),
            vec![
                ("x-api-key".into(), b"dev-secreT".to_vec()),
                json_ct(),
                key_header("hd-3"),
            ],
        ),
        (
            "ops key as API key".into(),
            vec![
                ("x-api-key".into(), DEV_OPS_KEY.as_bytes().to_vec()),
                json_ct(),
                key_header("hd-4"),
            ],
        ),
        (
            "huge API key".into(),
            vec![
                ("x-api-key".into(), vec![b'k'; 4096]),
                json_ct(),
                key_header("hd-5"),
            ],
        ),
        (
            "non-ASCII API key".into(),
            vec![
                ("x-api-key".into(), "dev-sécret".as_bytes().to_vec()),
                json_ct(),
                key_header("hd-6"),
            ],
        ),
        (
            "injection API key".into(),
            vec![
                ("x-api-key".into(), b"' OR '1'='1".to_vec()),
                json_ct(),
                key_header("hd-7"),
            ],
        ),
        (
            "no content type".into(),
            vec![api_key(), key_header("hd-8")],
        ),
        (
            "form content type".into(),
            vec![
                api_key(),
                (
                    "content-type".into(),
                    b"application/x-www-form-urlencoded".to_vec(),
                ),
                key_header("hd-9"),
            ],
        ),
        (
            "multipart".into(),
            vec![
                api_key(),
                (
                    "content-type".into(),
                    b"multipart/form-data; boundary=x".to_vec(),
                ),
                key_header("hd-10"),
            ],
        ),
        (
            "json lookalike".into(),
            vec![
                api_key(),
                ("content-type".into(), b"application/jsonx".to_vec()),
                key_header("hd-11"),
            ],
        ),
        (
            "latin-1 charset".into(),
            vec![
                api_key(),
                (
                    "content-type".into(),
                    b"application/json; charset=latin1".to_vec(),
                ),
                key_header("hd-12"),
            ],
        ),
        (
            "empty idempotency key".into(),
            vec![api_key(), json_ct(), key_header("")],
        ),
        (
            "long idempotency key".into(),
            vec![api_key(), json_ct(), key_header(&"i".repeat(256))],
        ),
        (
            "tab in idempotency key".into(),
            vec![api_key(), json_ct(), key_header("a\tb")],
        ),
        (
            "non-ASCII idempotency key".into(),
            vec![
                api_key(),
                json_ct(),
                ("idempotency-key".into(), "ключ".as_bytes().to_vec()),
            ],
        ),
        ("no idempotency key".into(), vec![api_key(), json_ct()]),
    ];
    for (label, headers) in header_cases {
        push(label, valid_text.clone().into_bytes(), headers);
    }
    // Hostile paths on the read and refund routes.
    for (i, path) in [
        "/payments/' OR 1=1 --".to_owned(),
        "/payments/%00".to_owned(),
        "/payments/..%2F..%2Fetc%2Fpasswd".to_owned(),
        format!("/payments/{}", "9".repeat(3000)),
        format!("/payments/{}/refunds", Uuid::now_v7()),
        "/payments/not-a-uuid/refunds".to_owned(),
        format!("/payments/{}/refunds/../..", Uuid::nil()),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(Hostile {
            label: format!("path {path}"),
            path,
            body: br#"{"amount_cents":-5}"#.to_vec(),
            headers: vec![api_key(), json_ct(), key_header(&format!("p-{i}"))],
        });
    }
    // Every case once more with random hostile tracing headers, which must never matter.
    let mut rng = Rng(0x5a6a_9a11);
    let tracing_junk = [
        "00-zzzz-yyyy-01",
        "",
        "00-00000000000000000000000000000000-0000000000000000-00",
        "\u{202e}",
        "a".repeat(2000).leak(),
        "'; DROP TABLE outbox; --",
    ];
    let again: Vec<Hostile> = out
        .iter()
        .filter(|h| h.body.len() <= 100_000)
        .map(|h| {
            let mut headers = h.headers.clone();
            headers.push((
                "traceparent".into(),
                rng.pick(&tracing_junk).as_bytes().to_vec(),
            ));
            headers.push((
                "x-correlation-id".into(),
                rng.pick(&tracing_junk).as_bytes().to_vec(),
            ));
            headers.push((
                "x-request-id".into(),
                rng.pick(&tracing_junk).as_bytes().to_vec(),
            ));
            Hostile {
                label: format!("{} + tracing junk", h.label),
                path: h.path.clone(),
                body: h.body.clone(),
                headers,
            }
        })
        .collect();
    out.extend(again);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_never_gets_a_5xx_and_writes_nothing() {
    let stack = TestStack::spawn().await;
    let cases = hostile_requests();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for case in &cases {
        let mut req = stack
            .http
            .post(format!("{}{}", stack.gateway_url(), case.path))
            .body(case.body.clone());
        for (name, value) in &case.headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).expect("sendable header");
            req = req.header(name.as_str(), value);
        }
        let resp = req.send().await.expect("the gateway answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        *statuses.entry(status.as_u16()).or_default() += 1;
        assert!(
            status.is_client_error(),
            "{}: expected a 4xx, got {status}: {}",
            case.label,
            String::from_utf8_lossy(&bytes)
        );
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{}: {status} without a JSON body", case.label));
        Answer {
            status,
            headers,
            body,
        }
        .assert_error_shape(&case.label);
    }
    eprintln!("{} hostile requests: {statuses:?}", cases.len());
    let orchestrator = stack.db("orchestrator").await;
    assert_eq!(
        count(&orchestrator, "SELECT count(*) FROM payments").await,
        0
    );
    assert_eq!(
        count(&orchestrator, "SELECT count(*) FROM refunds").await,
        0
    );
    assert_eq!(count(&orchestrator, "SELECT count(*) FROM outbox").await, 0);
    let risk = stack.db("risk").await;
    assert_eq!(count(&risk, "SELECT count(*) FROM inbox").await, 0);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_lists_every_public_route() {
    let stack = TestStack::spawn().await;
    let doc = send(
        stack
            .http
            .get(format!("{}/openapi.json", stack.gateway_url())),
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let listed: BTreeSet<(String, String)> = doc.body["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/payments"),
        ("GET", "/payments"),
        ("GET", "/payments/{payment_id}"),
        ("POST", "/payments/{payment_id}/refunds"),
        ("POST", "/payments/{payment_id}/capture"),
        ("POST", "/payments/{payment_id}/cancel"),
        ("POST", "/webhook_endpoints"),
        ("GET", "/webhook_endpoints"),
        ("DELETE", "/webhook_endpoints/{endpoint_id}"),
        ("POST", "/webhook_endpoints/{endpoint_id}/roll_secret"),
        ("GET", "/webhook_endpoints/{endpoint_id}/deliveries"),
        ("GET", "/events"),
        ("GET", "/events/{event_id}"),
        ("GET", "/openapi.json"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(listed, expected);
    assert_eq!(
        doc.body["components"]["securitySchemes"]["api_key"]["name"],
        "x-api-key"
    );
    // Every listed route is served: none answers as an unknown route or method.
    for (method, path) in &listed {
        let url = format!(
            "{}{}",
            stack.gateway_url(),
            path.replace("{payment_id}", &Uuid::now_v7().to_string())
        );
        let resp = stack
            .http
            .request(method.parse().unwrap(), url)
            .header("x-api-key", DEV_API_KEY)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status() != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if resp.status() == StatusCode::NOT_FOUND {
            let body: Value = resp.json().await.unwrap();
            assert_ne!(body["error"]["code"], "route_not_found", "{method} {path}");
        }
    }
    stack.teardown().await;
}

/// The document's enums are the domain's: every payment status, refund status and merchant
/// event type, and nothing else (they once drifted: REVIEW_REQUIRED, PENDING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_document_states_the_domain_enums() {
    let stack = TestStack::spawn().await;
    let doc = send(
        stack
            .http
            .get(format!("{}/openapi.json", stack.gateway_url())),
    )
    .await;
    let schemas = &doc.body["components"]["schemas"];
    let listed = |name: &str| -> Vec<String> {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no enum schema {name}: {}", schemas[name]))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        listed("PaymentStatus"),
        names(&sagapay_domain::PaymentStatus::ALL.map(|s| s.as_str()))
    );
    assert_eq!(
        listed("RefundStatus"),
        names(&sagapay_domain::RefundStatus::ALL.map(|s| s.as_str()))
    );
    assert_eq!(
        listed("MerchantEventType"),
        names(&sagapay_domain::MerchantEventType::ALL.map(|s| s.as_str()))
    );
    // Where they are used, they are referenced, not restated as free text.
    for (schema, field, target) in [
        ("Payment", "status", "PaymentStatus"),
        ("PaymentCreated", "status", "PaymentStatus"),
        ("Refund", "status", "RefundStatus"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["$ref"],
            format!("#/components/schemas/{target}"),
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["CreateWebhookEndpointRequest"]["properties"]["enabled_events"]["items"]["$ref"],
        "#/components/schemas/MerchantEventType"
    );
    stack.teardown().await;
}

/// An orchestrator that accepts connections and never answers.
async fn hung_orchestrator() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_in_flight_gets_409_and_a_failed_request_gives_its_key_back() {
    let stack = TestStack::spawn().await;
    // A second gateway on the same namespace whose orchestrator never answers.
    let (orchestrator_url, hung) = hung_orchestrator().await;
    let mut cfg = sagapay_gateway::Config::for_test(config("gateway", &stack.ns), orchestrator_url);
    cfg.orchestrator_timeout_ms = 1_500;
    let gateway = sagapay_gateway::start(cfg).await.expect("gateway starts");
    let url = gateway.base_url();
    let http = stack.http.clone();
    let post = |amount: i64| {
        http.post(format!("{url}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .header("idempotency-key", "slow-1")
            .json(&json!({"customer_id": "cust-slow", "amount_cents": amount, "currency": "USD"}))
    };
    let claimed = || {
        sagapay_e2e::metric_at(
            &http,
            &url,
            "idempotency_requests_total{outcome=\"claimed\",service=\"gateway\"}",
        )
    };

    let first = tokio::spawn(send(post(900)));
    eventually(
        Duration::from_secs(5),
        "the first request to claim its key",
        || async { (claimed().await >= 1.0).then_some(()) },
    )
    .await;
    // While it waits on the orchestrator: the same request gets 409, another body gets 422.
    let again = send(post(900)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.code(), "idempotency_request_in_progress");
    assert_eq!(again.headers["retry-after"], "1");
    again.assert_error_shape("in flight");
    let other = send(post(901)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.code(), "idempotency_key_reused");

    // The first gives up after the orchestrator timeout: 503, retry with the same key.
    let first = first.await.unwrap();
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.body
    );
    assert_eq!(first.code(), "upstream_unavailable");
    first.assert_error_shape("orchestrator unreachable");
    // The failure gave the key back: a retry claims it anew (and fails the same way).
    let retry = send(post(900)).await;
    assert_eq!(retry.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(claimed().await, 2.0);

    let orchestrator = stack.db("orchestrator").await;
    assert_eq!(
        count(&orchestrator, "SELECT count(*) FROM payments").await,
        0,
        "nothing reached the orchestrator"
    );
    gateway.stop().await.expect("gateway stops");
    hung.abort();
    stack.teardown().await;
}
