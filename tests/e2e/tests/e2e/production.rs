//! Production mode refuses unsafe settings at start, one message per problem, and starts with
//! safe ones; there the development merchant's keys do not authenticate.

use sagapay_e2e::servers::secure_kafka;
use sagapay_e2e::{config, eventually, fresh_namespace, service_command, ReportedAddr};
use sagapay_messaging::postgres_url::with_database;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

/// Runs `binary` in production mode with `env` (over a fresh namespace) and returns its exit
/// status and standard error; it must exit by itself.
fn refused(binary: &str, env: &[(&str, &str)]) -> String {
    let ns = fresh_namespace();
    let mut command = service_command(binary);
    command
        .env_clear()
        .env("SAGAPAY_ENVIRONMENT", "production")
        .env("SAGAPAY_NAMESPACE", ns.as_str())
        .env("SAGAPAY_HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run the service");
    assert!(!out.status.success(), "{binary} started with {env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stops the service when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

/// Where the service listens, once it said so (it fails when the service exits first).
fn wait_listening(addr: &ReportedAddr, child: &mut KillOnDrop) -> std::net::SocketAddr {
    addr.wait(&mut child.0).unwrap_or_else(|e| panic!("{e}"))
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn production_mode_names_every_unsafe_setting_and_exits() {
    // Everything unsafe at once: each problem has its own line.
    let err = refused(
        "orchestrator",
        &[
            (
                "SAGAPAY_POSTGRES_URL",
                "postgres://sagapay:sagapay@127.0.0.1:5432",
            ),
            ("SAGAPAY_KAFKA_REPLICATION_FACTOR", "1"),
            ("SAGAPAY_OPS_KEY", "dev-ops-secret"),
        ],
    );
    for expected in [
        "production mode refuses to start orchestrator",
        "SAGAPAY_POSTGRES_URL has the development password",
        "SAGAPAY_POSTGRES_URL has sslmode=prefer: production needs sslmode=verify-full",
        "SAGAPAY_KAFKA_REPLICATION_FACTOR is 1, below the minimum of 3",
        "SAGAPAY_OPS_KEY must be set",
        "SAGAPAY_TRUSTED_CALLERS must be set in production",
        "SAGAPAY_KAFKA_CLIENT_CONFIG has security.protocol=PLAINTEXT",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // One at a time, the rest safe: only that one is named.
    let strong = "x".repeat(40);
    let (_, gateway_public) = sagapay_service_kit::service_auth::generate_key_pair().unwrap();
    let trusted = format!("gateway={gateway_public}");
    let dev_trusted = format!(
        "gateway={}",
        sagapay_service_kit::ServiceSigner::development("gateway").public_key()
    );
    let safe = [
        (
            "SAGAPAY_POSTGRES_URL",
            "postgres://sagapay:a-real-password@db.internal:5432?sslmode=verify-full&sslrootcert=/etc/sagapay/ca.crt",
        ),
        ("SAGAPAY_KAFKA_REPLICATION_FACTOR", "3"),
        ("SAGAPAY_OPS_KEY", strong.as_str()),
        ("SAGAPAY_TRUSTED_CALLERS", trusted.as_str()),
        (
            "SAGAPAY_KAFKA_CLIENT_CONFIG",
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=orchestrator,ssl.ca.location=/etc/sagapay/kafka-ca.crt",
        ),
    ];
    let cases: [(&str, &str, &str); 11] = [
        (
            "SAGAPAY_POSTGRES_URL",
            "postgres://sagapay@db.internal:5432?sslmode=verify-full&sslrootcert=/etc/sagapay/ca.crt",
            "has no password",
        ),
        (
            "SAGAPAY_POSTGRES_URL",
            "postgres://sagapay:a-real-password@db.internal:5432?sslmode=verify-ca",
            "has sslmode=verify-ca without sslrootcert",
        ),
        (
            "SAGAPAY_POSTGRES_URL",
            "postgres://sagapay:a-real-password@db.internal:5432?sslmode=require",
            "has sslmode=require: production needs sslmode=verify-full",
        ),
        (
            "SAGAPAY_POSTGRES_URL",
            "postgres://sagapay:a-real-password@db.internal:5432?sslmode=disable",
            "has sslmode=disable: production needs sslmode=verify-full",
        ),
        (
            "SAGAPAY_KAFKA_REPLICATION_FACTOR",
            "2",
            "is 2, below the minimum of 3",
        ),
        ("SAGAPAY_OPS_KEY", "short", "SAGAPAY_OPS_KEY must be set"),
        (
            "SAGAPAY_TRUSTED_CALLERS",
            "",
            "SAGAPAY_TRUSTED_CALLERS must be set in production",
        ),
        (
            "SAGAPAY_TRUSTED_CALLERS",
            dev_trusted.as_str(),
            "trusts the development key of gateway",
        ),
        (
            "SAGAPAY_KAFKA_CLIENT_CONFIG",
            "",
            "security.protocol=PLAINTEXT: production needs SASL_SSL",
        ),
        (
            "SAGAPAY_KAFKA_CLIENT_CONFIG",
            "security.protocol=SASL_PLAINTEXT,sasl.mechanisms=SCRAM-SHA-512,sasl.username=orchestrator",
            "security.protocol=SASL_PLAINTEXT: production needs SASL_SSL",
        ),
        (
            "SAGAPAY_KAFKA_CLIENT_CONFIG",
            "security.protocol=SASL_SSL,sasl.username=orchestrator,enable.ssl.certificate.verification=false",
            "enable.ssl.certificate.verification=false",
        ),
    ];
    for (name, value, expected) in cases {
        let env: Vec<(&str, &str)> = safe
            .iter()
            .map(|&(k, v)| if k == name { (k, value) } else { (k, v) })
            .collect();
        let err = refused("orchestrator", &env);
        assert!(
            err.contains(expected),
            "{name}={value:?}: missing {expected:?} in:\n{err}"
        );
        assert_eq!(
            err.matches("\n  - ").count(),
            1,
            "{name}={value:?}: one problem only:\n{err}"
        );
    }
    // The gateway's Redis (idempotency fast path) must authenticate over TLS, or be off.
    let (gateway_seed, _) = sagapay_service_kit::service_auth::generate_key_pair().unwrap();
    for (redis, says) in [
        (
            "rediss://127.0.0.1:6380",
            "SAGAPAY_REDIS_URL has no password",
        ),
        ("redis://:a-password@127.0.0.1:6379", "is not rediss://"),
        ("rediss://:a-password@127.0.0.1:6380/#insecure", "#fragment"),
    ] {
        let mut env = safe.to_vec();
        env.push(("SAGAPAY_SERVICE_SIGNING_KEY", gateway_seed.as_str()));
        env.push(("SAGAPAY_REDIS_URL", redis));
        let err = refused("gateway", &env);
        assert!(err.contains(says), "{redis}: missing {says:?} in:\n{err}");
        assert_eq!(err.matches("\n  - ").count(), 1, "one problem only:\n{err}");
    }
    // The gateway calls another machine over https only (loopback may stay plain).
    for (name, url) in [
        (
            "SAGAPAY_ORCHESTRATOR_URL",
            "http://orchestrator.internal:8001",
        ),
        ("SAGAPAY_NOTIFICATION_URL", "http://10.1.2.3:8005"),
    ] {
        let mut env = safe.to_vec();
        env.push(("SAGAPAY_SERVICE_SIGNING_KEY", gateway_seed.as_str()));
        env.push(("SAGAPAY_REDIS_URL", ""));
        env.push((name, url));
        let err = refused("gateway", &env);
        let says = format!("{name} is http:// to");
        assert!(err.contains(&says), "{url}: missing {says:?} in:\n{err}");
        assert_eq!(err.matches("\n  - ").count(), 1, "one problem only:\n{err}");
    }
}

/// The CA that signed the local server's certificate (scripts/stack.sh).
fn local_ca() -> String {
    std::env::var("SAGAPAY_TEST_PG_CA")
        .unwrap_or_else(|_| "/var/lib/postgresql/sagapay-tls/ca.crt".to_owned())
}

/// A CA of its own that signed nothing the server has.
fn stranger_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = dir.join("stranger-ca.crt");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1"])
        .args(["-subj", "/CN=stranger"])
        .arg("-keyout")
        .arg(dir.join("stranger-ca.key"))
        .arg("-out")
        .arg(&ca)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl made no CA");
    ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_starts_with_safe_settings_and_refuses_the_development_merchant() {
    let ns = fresh_namespace();
    let base = sagapay_e2e::postgres_server_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&base, "postgres"))
        .await
        .unwrap();
    // A database user of its own with a real password.
    let role = format!("{}_prod", ns.as_str());
    let password = Uuid::new_v4().simple().to_string();
    sqlx::query(&format!(
        "CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"
    ))
    .execute(&admin)
    .await
    .unwrap();
    // The gateway's own signing key, in a file (the container convention), and its public key
    // trusted by the notification service.
    let (gateway_seed, gateway_public) =
        sagapay_service_kit::service_auth::generate_key_pair().unwrap();
    let keys_file = std::env::temp_dir().join(format!("{}-signing-key", ns.as_str()));
    std::fs::write(&keys_file, format!("{gateway_seed}\n")).unwrap();
    // Kafka as production needs it: TLS, a user per service, the namespace's ACLs.
    let (kafka_security, kafka) = secure_kafka(&ns, 13_500..14_000).await;
    // No orchestrator: its address is a port of the test's that drops every connection.
    let (orchestrator_port, _orchestrator) = sagapay_e2e::dead_peer();
    let server_port = url::Url::parse(&base)
        .expect("server URL")
        .port()
        .unwrap_or(5432);
    // TLS with the server's identity checked: the certificate names localhost.
    let url_with_ca = |ca: &str| {
        format!("postgres://{role}:{password}@localhost:{server_port}?sslmode=verify-full&sslrootcert={ca}")
    };
    // Each service binds port 0 and says where (no port of the test's is free until it is
    // taken); the gateway is given the notification service's address once it is known.
    let run = |binary: &str, notification: Option<&str>, postgres_url: &str, stderr: Stdio| {
        let mut command = service_command(binary);
        command.env_clear();
        let addr = ReportedAddr::listen(&mut command, [127, 0, 0, 1].into());
        if let Some(url) = notification {
            command.env("SAGAPAY_NOTIFICATION_URL", url);
        }
        let child = command
            .env("SAGAPAY_ENVIRONMENT", "production")
            .env("SAGAPAY_NAMESPACE", ns.as_str())
            .env(
                "SAGAPAY_ORCHESTRATOR_URL",
                format!("http://127.0.0.1:{orchestrator_port}"),
            )
            .env("SAGAPAY_POSTGRES_URL", postgres_url)
            .env("SAGAPAY_SERVICE_SIGNING_KEY_FILE", &keys_file)
            .env(
                "SAGAPAY_TRUSTED_CALLERS",
                format!("gateway={gateway_public}"),
            )
            // The local Redis has no password: the idempotency fast path is off.
            .env("SAGAPAY_REDIS_URL", "")
            .env("SAGAPAY_KAFKA_BROKERS", kafka.bootstrap())
            .env(
                "SAGAPAY_KAFKA_CLIENT_CONFIG",
                kafka_security.client_config(binary),
            )
            .env(
                "SAGAPAY_KAFKA_SASL_PASSWORD_FILE",
                kafka_security.password_file(binary),
            )
            // The test's cluster has one broker: the operator states the minimum it accepts.
            .env("SAGAPAY_KAFKA_REPLICATION_FACTOR", "1")
            .env("SAGAPAY_KAFKA_MIN_REPLICATION_FACTOR", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        (child, addr)
    };
    // A server whose certificate the configured CA did not sign is not trusted.
    let tmp = std::env::temp_dir().join(ns.as_str());
    std::fs::create_dir_all(&tmp).unwrap();
    let stranger = stranger_ca(&tmp);
    let (refused, _) = run(
        "gateway",
        None,
        &url_with_ca(stranger.to_str().unwrap()),
        Stdio::piped(),
    );
    let out = refused.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started against an untrusted server");
    assert!(err.contains("certificate verify failed"), "{err}");

    // The migration client (tokio-postgres under refinery) checks the same way.
    let attempt = sagapay_messaging::postgres_url::connect_migration_client(&with_database(
        &url_with_ca(stranger.to_str().unwrap()),
        "postgres",
    ))
    .await;
    let Err(err) = attempt else {
        panic!("the migration client trusted an unknown server");
    };
    assert!(
        format!("{err:#}").contains("certificate verify failed"),
        "{err:#}"
    );

    let prod_url = url_with_ca(&local_ca());
    let (notification, notification_addr) = run("notification", None, &prod_url, Stdio::null());
    let mut notification = KillOnDrop(notification);
    let notification_url = format!(
        "http://{}",
        wait_listening(&notification_addr, &mut notification)
    );
    let (gateway, gateway_addr) = run("gateway", Some(&notification_url), &prod_url, Stdio::null());
    let mut child = KillOnDrop(gateway);
    let url = format!("http://{}", wait_listening(&gateway_addr, &mut child));
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "the gateway ready in production",
        || async {
            let resp = http.get(format!("{url}/ready")).send().await.ok()?;
            (resp.status() == 200).then_some(())
        },
    )
    .await;

    // Every session it holds is encrypted.
    let (sessions, in_clear): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
    )
    .bind(&role)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(sessions > 0, "the gateway holds no session");
    assert_eq!(in_clear, 0, "{in_clear} of {sessions} sessions without TLS");

    // A development merchant and key in the database (as a development run would have seeded
    // them), and a real merchant's key.
    let db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&prod_url, &ns.database("gateway")))
        .await
        .unwrap();
    for (name, key) in [("dev-merchant", "dev-secret"), ("acme", "sk_acme_real_key")] {
        let merchant = Uuid::now_v7();
        sqlx::query("INSERT INTO merchants (merchant_id, name) VALUES ($1, $2)")
            .bind(merchant)
            .bind(name)
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO api_keys (key_id, merchant_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(merchant)
            .bind(Sha256::digest(key.as_bytes()).to_vec())
            .bind(&key[..4])
            .execute(&db)
            .await
            .unwrap();
    }
    let status_with = |key: &'static str| {
        let req = http
            .get(format!("{url}/payments/{}", Uuid::now_v7()))
            .header("x-api-key", key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status_with("dev-secret").await,
        401,
        "the development key in production"
    );
    // Authenticated: it went on to the orchestrator, which is down (503).
    assert_eq!(
        status_with("sk_acme_real_key").await,
        503,
        "a real key authenticates"
    );

    // Webhooks in production go to https on public addresses only: the notification service
    // refuses loopback, whatever the gateway let through.
    eventually(
        Duration::from_secs(30),
        "the notification service ready in production",
        || async {
            let resp = http
                .get(format!("{notification_url}/ready"))
                .send()
                .await
                .ok()?;
            (resp.status() == 200).then_some(())
        },
    )
    .await;
    for (endpoint, why) in [
        ("http://127.0.0.1:9/hooks", "must use https"),
        ("https://127.0.0.1/hooks", "not a public address"),
        ("https://localhost/hooks", "not a public address"),
        ("https://169.254.169.254/latest", "not a public address"),
    ] {
        let resp = http
            .post(format!("{url}/webhook_endpoints"))
            .header("x-api-key", "sk_acme_real_key")
            .json(&serde_json::json!({"url": endpoint, "enabled_events": ["payment.settled"]}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_url")),
            "{endpoint}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{endpoint}: {body}"
        );
    }

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    drop(notification);
    db.close().await;
    // Its databases belong to its user.
    let mut kafka = config("gateway", &ns).kafka;
    kafka.replication_factor = 1;
    sagapay_service_kit::drop_namespace(&prod_url, &kafka, &ns)
        .await
        .unwrap();
    let _ = std::fs::remove_file(&keys_file);
    let _ = std::fs::remove_dir_all(&tmp);
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&admin)
        .await
        .unwrap();
}

/// `sslmode=verify-ca` checks the server's chain but not its name, so the CA it trusts is all
/// that stands between the service and anyone presenting a certificate. Given `sslrootcert`,
/// that CA is the only one trusted, as libpq does: a server whose certificate a CA of the
/// host's trust store signed is refused (it was accepted: sqlx added `sslrootcert` to the
/// system's roots). The host's store is stood in for by `SSL_CERT_FILE` (OpenSSL's), which
/// the control run shows is honoured: without `sslrootcert` the same server is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_trusts_only_the_sslrootcert_it_is_given() {
    let dir = std::env::temp_dir().join(format!("sagapay-verify-ca-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let system_ca = sagapay_e2e::tls::TestCa::new("a CA the host trusts");
    let our_ca = sagapay_e2e::tls::TestCa::new("the database's CA");
    let system_file = system_ca.write(&dir, "system.pem");
    let our_file = our_ca.write(&dir, "ours.pem");
    let server = tokio::task::block_in_place(|| {
        sagapay_e2e::servers::PgServer::start_with_tls(
            13_000..13_500,
            &system_ca.server(&["localhost", "127.0.0.1"]),
        )
    })
    .expect("a PostgreSQL server of the test's own, with TLS");
    let ns = fresh_namespace();
    let gateway = |query: &str| {
        let mut command = service_command("gateway");
        command.env_clear();
        let addr = ReportedAddr::listen(&mut command, [127, 0, 0, 1].into());
        let child = command
            .env("SAGAPAY_NAMESPACE", ns.as_str())
            .env("SAGAPAY_POSTGRES_URL", format!("{}?{query}", server.url()))
            .env("SAGAPAY_REDIS_URL", "")
            .env("SAGAPAY_STARTUP_WAIT_MS", "5000")
            .env("SSL_CERT_FILE", &system_file)
            .env("SSL_CERT_DIR", &dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, addr)
    };
    // Given our CA, the server (signed by the host's) is refused.
    let out = gateway(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        our_file.display()
    ))
    .0
    .wait_with_output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started against a server its CA did not sign"
    );
    assert!(err.contains("certificate verify failed"), "{err}");
    // Refused by the service's own client (sqlx), at its first connection: not only later by
    // the migrations' client.
    assert!(
        err.contains("connecting to PostgreSQL") && !err.contains("migrating database"),
        "{err}"
    );
    // The migrations' client (tokio-postgres), in a process whose OpenSSL store is the same
    // stand-in: it refuses too.
    let probe = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "production::migration_client_in_a_process_of_its_own",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", &system_file)
        .env("SSL_CERT_DIR", &dir)
        .env(
            "PROBE_POSTGRES_URL",
            with_database(
                &format!(
                    "{}?sslmode=verify-ca&sslrootcert={}",
                    server.url(),
                    our_file.display()
                ),
                "postgres",
            ),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(
        said.contains("MIGRATION CLIENT REFUSED") && said.contains("certificate verify failed"),
        "{said}"
    );

    // Control: without sslrootcert, the host's store is what verifies, and it trusts the server.
    let (control, addr) = gateway("sslmode=verify-ca");
    let mut child = KillOnDrop(control);
    let url = format!("http://{}", wait_listening(&addr, &mut child));
    let child = std::sync::Mutex::new(child);
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), "the gateway ready", || async {
        if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
            panic!("the gateway exited ({status}) although the host's store trusts the server");
        }
        let resp = http.get(format!("{url}/ready")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    drop(child);
    sagapay_e2e::cleanup_namespace(&ns).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run by `verify_ca_trusts_only_the_sslrootcert_it_is_given` in a process of its own (its
/// OpenSSL trust store set by the environment, which a test cannot change in its own process):
/// connects the migrations' client to `PROBE_POSTGRES_URL` and says what happened.
#[tokio::test]
#[ignore = "a helper process of verify_ca_trusts_only_the_sslrootcert_it_is_given"]
async fn migration_client_in_a_process_of_its_own() {
    let url = std::env::var("PROBE_POSTGRES_URL").expect("PROBE_POSTGRES_URL");
    match sagapay_messaging::postgres_url::connect_migration_client(&url).await {
        Ok(_) => println!("MIGRATION CLIENT CONNECTED"),
        Err(e) => println!("MIGRATION CLIENT REFUSED: {e:#}"),
    }
}
