//! The whole stack as a deployment runs it (the profile of "Credentials for production" in
//! the README): every service in production mode, PostgreSQL over TLS with the server's
//! identity checked (`verify-full` against the database's own CA), Kafka over SASL_SSL with a
//! user per service and the namespace's ACLs (`sagapayctl kafka acls`), Redis over TLS with a
//! password, every service serving HTTPS with a certificate of the services' own CA (the
//! gateway trusting that CA alone), the gateway signing its
//! calls with a key of its own that the orchestrator and the notification service trust by its
//! public key, real ops keys, two merchants with keys of their own, and a webhook receiver
//! over https behind a CA of its own. A payment of each merchant settles, each sees only its
//! own, and the webhook is delivered over TLS and verifies with the endpoint's secret; after
//! a restart of the broker, a payment settles again.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use sagapay_e2e::servers::{secure_kafka, PgServer, RedisServer};
use sagapay_e2e::tls::{serve_https, TestCa};
use sagapay_e2e::{cleanup_namespace, eventually, fresh_namespace, Processes};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::postgres::PgPoolOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// What the receiver got: each request's signature header and body.
type Received = Arc<Mutex<Vec<(String, String)>>>;

async fn receive(State(got): State<Received>, headers: HeaderMap, body: String) -> &'static str {
    let signature = headers
        .get("sagapay-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    got.lock().unwrap().push((signature, body));
    "ok"
}

/// The receiver's own check of `SagaPay-Signature` (the documented scheme).
fn verifies(signature: &str, secret: &str, body: &str) -> bool {
    let Some(t) = signature.split(',').find_map(|p| p.strip_prefix("t=")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    signature
        .split(',')
        .filter_map(|p| p.strip_prefix("v1="))
        .any(|v| v == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_production_profile_settles_each_merchants_payment_and_delivers_its_webhook_over_https()
{
    let dir = std::env::temp_dir().join(format!("sagapay-profile-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_ca = TestCa::new("the database's CA");
    let hooks_ca = TestCa::new("the merchant's receivers' CA");
    let db_ca_file = db_ca.write(&dir, "db-ca.pem");
    let hooks_ca_file = hooks_ca.write(&dir, "hooks-ca.pem");
    let server = tokio::task::block_in_place(|| {
        PgServer::start_with_tls(10_000..10_500, &db_ca.server(&["localhost"]))
    })
    .expect("a PostgreSQL server with TLS");
    let password = Uuid::new_v4().simple().to_string();
    let postgres_url = format!(
        "postgres://sagapay:{password}@localhost:{}?sslmode=verify-full&sslrootcert={}",
        server.port(),
        db_ca_file.display()
    );
    let ns = fresh_namespace();
    // Kafka with TLS, a SCRAM user per service and the namespace's ACLs (the operator's one
    // step before the first start); the services create their topics themselves.
    let (kafka_security, mut kafka) = secure_kafka(&ns, 10_500..11_000).await;
    // Redis over TLS with a password, behind a CA of its own: the idempotency fast path.
    let redis_ca = TestCa::new("the Redis CA");
    let redis_ca_file = redis_ca.write(&dir, "redis-ca.pem");
    let redis_password = Uuid::new_v4().simple().to_string();
    let redis = tokio::task::block_in_place(|| {
        RedisServer::start_tls(
            11_500..12_000,
            &redis_ca.server(&["127.0.0.1"]),
            &redis_password,
        )
    })
    .expect("a Redis with TLS");
    let kafka_client = kafka_security.client_config("{service}");
    let kafka_password = kafka_security.password_file("{service}");
    let (gateway_key, gateway_public) =
        sagapay_service_kit::service_auth::generate_key_pair().unwrap();
    let ops_key = format!("ops-{}", Uuid::new_v4().simple());
    let trusted = format!("gateway={gateway_public}");
    let hooks_ca_path = hooks_ca_file.display().to_string();

    let got: Received = Arc::default();
    let receiver = serve_https(
        axum::Router::new()
            .route("/hooks", post(receive))
            .with_state(got.clone()),
        &hooks_ca.server(&["127.0.0.1"]),
    )
    .await;

    let mut procs = Processes::in_namespace(
        ns.clone(),
        &[
            ("SAGAPAY_ENVIRONMENT", "production"),
            ("SAGAPAY_POSTGRES_URL", &postgres_url),
            ("SAGAPAY_REDIS_URL", &redis.url),
            (
                "SAGAPAY_REDIS_CA_FILE",
                &redis_ca_file.display().to_string(),
            ),
            // Each service connects as itself (`{service}`: its own name and password file).
            ("SAGAPAY_KAFKA_BROKERS", &kafka.bootstrap()),
            ("SAGAPAY_KAFKA_CLIENT_CONFIG", &kafka_client),
            (
                "SAGAPAY_KAFKA_SASL_PASSWORD_FILE",
                &kafka_password.display().to_string(),
            ),
            // The test's cluster has one broker: the operator states the minimum it accepts.
            ("SAGAPAY_KAFKA_REPLICATION_FACTOR", "1"),
            ("SAGAPAY_KAFKA_MIN_REPLICATION_FACTOR", "1"),
            ("SAGAPAY_OPS_KEY", &ops_key),
            ("SAGAPAY_SERVICE_SIGNING_KEY", &gateway_key),
            ("SAGAPAY_TRUSTED_CALLERS", &trusted),
            ("SAGAPAY_WEBHOOK_CA_FILE", &hooks_ca_path),
            // The receiver is on loopback, which production refuses unless the operator
            // names the network (a private network it trusts); https is still required.
            ("SAGAPAY_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ],
    );
    // Every service serves HTTPS with a certificate of the services' CA for its address; the
    // gateway (and this test) trust that CA alone.
    let services_ca = TestCa::new("the services' CA");
    let services_ca_file = services_ca.write(&dir, "services-ca.pem");
    let services_cert = services_ca.server(&[&procs.host().to_string()]);
    let (cert_file, key_file) = (dir.join("services.pem"), dir.join("services.key"));
    std::fs::write(&cert_file, &services_cert.cert_pem).unwrap();
    std::fs::write(&key_file, &services_cert.key_pem).unwrap();
    procs.set_env("SAGAPAY_TLS_CERT_FILE", &cert_file.display().to_string());
    procs.set_env("SAGAPAY_TLS_KEY_FILE", &key_file.display().to_string());
    procs.set_env(
        "SAGAPAY_SERVICE_CA_FILE",
        &services_ca_file.display().to_string(),
    );
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(services_ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    procs.start_all();
    procs.wait_all_ready(&http).await;
    let gateway = procs.url("gateway");
    assert!(gateway.starts_with("https://"), "{gateway}");
    // Only over TLS: plain HTTP gets no answer, and neither does a client that does not trust
    // the services' CA.
    let orchestrator = procs.url("orchestrator");
    let plain = orchestrator.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/health")).await.is_err());
    assert!(reqwest::get(format!("{orchestrator}/health"))
        .await
        .is_err());
    assert_eq!(
        http.get(format!("{orchestrator}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Two merchants, made as `sagapayctl merchant create` makes them (over TLS too).
    let gateway_db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&sagapay_messaging::postgres_url::with_database(
            &postgres_url,
            &ns.database("gateway"),
        ))
        .await
        .unwrap();
    let (_, a) = sagapay_gateway::keys::create_merchant(&gateway_db, "Acme Ltd")
        .await
        .unwrap();
    let (_, b) = sagapay_gateway::keys::create_merchant(&gateway_db, "Bolt GmbH")
        .await
        .unwrap();
    let (key_a, key_b) = (a.secret, b.secret);
    // The development key authenticates nowhere here.
    let dev = http
        .get(format!("{gateway}/payments"))
        .header("x-api-key", sagapay_e2e::DEV_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(dev.status(), 401);

    let endpoint: Value = http
        .post(format!("{gateway}/webhook_endpoints"))
        .header("x-api-key", &key_a)
        .json(&json!({"url": format!("{receiver}/hooks"), "enabled_events": ["payment.settled"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = endpoint["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{endpoint}"))
        .to_owned();

    let pay = |key: &str, idempotency_key: &str| {
        let (http, gateway, key) = (http.clone(), gateway.clone(), key.to_owned());
        let body = json!({"customer_id": "cust-1", "amount_cents": 4_200, "currency": "EUR",
                          "idempotency_key": idempotency_key});
        async move {
            let resp = http
                .post(format!("{gateway}/payments"))
                .header("x-api-key", &key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let created: Value = resp.json().await.unwrap();
            created["payment_id"].as_str().unwrap().to_owned()
        }
    };
    let status = |key: &str, pid: &str| {
        let req = http
            .get(format!("{gateway}/payments/{pid}"))
            .header("x-api-key", key);
        async move {
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let of_a = pay(&key_a, "profile-a").await;
    let of_b = pay(&key_b, "profile-b").await;
    for (key, pid) in [(&key_a, &of_a), (&key_b, &of_b)] {
        eventually(WAIT, &format!("payment {pid} settled"), || async {
            let (code, p) = status(key, pid).await;
            (code == 200 && p["status"] == "SETTLED").then_some(())
        })
        .await;
    }
    // A refund of part of A's payment goes through the whole secured saga too.
    let refund = http
        .post(format!("{gateway}/payments/{of_a}/refunds"))
        .header("x-api-key", &key_a)
        .json(
            &json!({"amount_cents": 1_200, "idempotency_key": "profile-refund",
                      "reason": "customer asked"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), 201);
    eventually(WAIT, "the refund succeeded", || async {
        let (_, p) = status(&key_a, &of_a).await;
        (p["status"] == "PARTIALLY_REFUNDED" && p["refunds"][0]["status"] == "SUCCEEDED")
            .then_some(())
    })
    .await;

    // A retry is answered by the fast path, from Redis over TLS.
    let gateway_metric = |name_and_labels: &'static str| {
        let (http, gateway) = (http.clone(), gateway.clone());
        async move { sagapay_e2e::metric_at(&http, &gateway, name_and_labels).await }
    };
    assert_eq!(pay(&key_a, "profile-a").await, of_a);
    assert_eq!(
        gateway_metric("idempotency_requests_total{outcome=\"replayed\",service=\"gateway\"}")
            .await,
        1.0
    );
    // Redis gone: the retry still gets the same payment, from the orchestrator's durable guard.
    drop(redis);
    assert_eq!(pay(&key_a, "profile-a").await, of_a);
    assert!(
        gateway_metric("idempotency_redis_unavailable_total{service=\"gateway\"}").await >= 1.0
    );

    // Each merchant sees its own payment only.
    assert_eq!(status(&key_b, &of_a).await.0, 404);
    assert_eq!(status(&key_a, &of_b).await.0, 404);

    // The webhook of A's payment arrived over TLS and verifies; B's payment sent none there.
    let (signature, body) = eventually(WAIT, "the webhook over https", || async {
        got.lock().unwrap().first().cloned()
    })
    .await;
    assert!(verifies(&signature, &secret, &body), "{signature} {body}");
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "payment.settled");
    assert_eq!(event["data"]["object"]["payment_id"], of_a.as_str());
    assert_eq!(event["data"]["object"]["amount_captured_cents"], 4_200);
    sagapay_e2e::wait_quiet(&http, &{
        let mut services = Vec::new();
        for s in sagapay_e2e::SERVICES {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&sagapay_messaging::postgres_url::with_database(
                    &postgres_url,
                    &ns.database(s),
                ))
                .await
                .unwrap();
            services.push((s, procs.url(s), pool));
        }
        services
    })
    .await;
    assert_eq!(got.lock().unwrap().len(), 1, "one delivery, of A's payment");

    // The broker restarts (a graceful stop, as a rolling upgrade does): the services
    // authenticate again and a payment settles.
    tokio::task::block_in_place(|| {
        kafka.stop(0);
        kafka.restart(0)
    })
    .expect("the broker back");
    let after = pay(&key_b, "profile-after-restart").await;
    eventually(WAIT, "a payment after the broker's restart", || async {
        let (code, p) = status(&key_b, &after).await;
        (code == 200 && p["status"] == "SETTLED").then_some(())
    })
    .await;

    // Every session any service holds to the database is encrypted.
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&sagapay_messaging::postgres_url::with_database(
            &postgres_url,
            "postgres",
        ))
        .await
        .unwrap();
    let (sessions, in_clear): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname LIKE $1",
    )
    .bind(format!("{}_%", ns.as_str()))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(sessions >= 6, "the services hold sessions: {sessions}");
    assert_eq!(in_clear, 0, "{in_clear} of {sessions} sessions without TLS");

    drop(procs);
    drop(kafka);
    cleanup_namespace(&ns).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
