//! A secure Kafka cluster of the test's own (`infra/kafka/secure.properties`: TLS, SASL/SCRAM,
//! KRaft's authorizer) with the namespace's ACLs as `sagapayctl kafka acls --apply` creates
//! them: who may write to the orchestrator's channel. A forged `payments.settled` written there
//! would be consumed like a real one, so only the services whose events go there may write.

use rdkafka::producer::{FutureProducer, FutureRecord};
use sagapay_e2e::fresh_namespace;
use sagapay_e2e::servers::{secure_kafka, KafkaCluster};
use sagapay_messaging::KafkaSettings;
use std::time::Duration;

fn settings(cluster: &KafkaCluster, overrides: Vec<(String, String)>) -> KafkaSettings {
    KafkaSettings {
        brokers: cluster.bootstrap(),
        client_overrides: overrides,
        // A write the broker will not take fails in seconds, not in the default 30.
        producer_overrides: vec![("message.timeout.ms".to_owned(), "8000".to_owned())],
        partitions: 2,
        ..KafkaSettings::default()
    }
}

/// Writes one record to `topic`; the broker's answer.
async fn write(kafka: &KafkaSettings, topic: &str) -> Result<(), String> {
    let producer: FutureProducer = kafka
        .producer("security-check")
        .map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::to(topic)
                .key("forged")
                .payload(r#"{"event_type":"payments.settled"}"#),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// Who can write to `<ns>.orchestrator`: nobody without credentials (in clear or over TLS),
/// nobody with a wrong password, not the gateway nor the notification service (they produce
/// nothing there); the ledger can (its `payments.settled` goes there), which shows the
/// refusals are the ACLs' and not a broken setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_services_that_answer_the_saga_can_write_to_its_channel() {
    let ns = fresh_namespace();
    let (security, cluster) = secure_kafka(&ns, 11_000..11_500).await;
    security
        .admin(&cluster)
        .ensure_topics(&ns.all_topics())
        .await
        .unwrap();
    let channel = format!("{}.orchestrator", ns.as_str());

    let ca = security.ca_file.display().to_string();
    let over = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let mut wrong_password = security.client_overrides("ledger");
    wrong_password.retain(|(k, _)| k != "sasl.password");
    wrong_password.push(("sasl.password".to_owned(), "not-the-password".to_owned()));
    let refused = [
        ("a client in clear", over(&[])),
        (
            "a client over TLS without credentials",
            over(&[("security.protocol", "SSL"), ("ssl.ca.location", &ca)]),
        ),
        ("the ledger's name with a wrong password", wrong_password),
        ("the gateway", security.client_overrides("gateway")),
        (
            "the notification service",
            security.client_overrides("notification"),
        ),
    ];
    // At once: a refused connection fails only when its write times out (8 s).
    let outcomes = futures::future::join_all(refused.into_iter().map(|(who, overrides)| {
        let kafka = settings(&cluster, overrides);
        let channel = channel.clone();
        async move { (who, write(&kafka, &channel).await) }
    }))
    .await;
    for (who, outcome) in &outcomes {
        assert!(outcome.is_err(), "{who} wrote to {channel}");
    }
    // The ACL's refusal says so (not a timeout that any broken setup would give).
    let (_, notification) = &outcomes[4];
    let notification = notification.as_ref().unwrap_err();
    assert!(
        notification.to_ascii_lowercase().contains("authoriz"),
        "{notification}"
    );
    for who in ["ledger", "risk", "provider-adapter"] {
        write(
            &settings(&cluster, security.client_overrides(who)),
            &channel,
        )
        .await
        .unwrap_or_else(|e| panic!("{who} could not write to {channel}: {e}"));
    }
    // Nor can a service write to a channel it does not produce to: risk to the provider's.
    let provider = format!("{}.provider", ns.as_str());
    assert!(
        write(
            &settings(&cluster, security.client_overrides("risk")),
            &provider
        )
        .await
        .is_err(),
        "risk wrote to {provider}"
    );
}
