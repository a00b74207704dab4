//! The operator's tool. `dlq` reads the namespace's dead-letter topic and replays dead letters
//! to their original topic, byte for byte (so with their original `event_id`): a replayed
//! event that was already processed is skipped by the consumer's inbox and changes nothing.

pub mod dlq {
    use anyhow::Context;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;
    use rdkafka::{Offset, TopicPartitionList};
    use sagapay_domain::Namespace;
    use sagapay_messaging::{Classification, DeadLetter, KafkaSettings, MessageHeaders};
    use serde::Serialize;
    use std::time::{Duration, Instant};

    /// A dead letter and where it sits in the dead-letter topic (`partition:offset`).
    #[derive(Debug, Clone, Serialize)]
    pub struct Entry {
        pub position: String,
        pub letter: DeadLetter,
    }

    /// Which dead letters a command applies to. Empty fields match everything.
    #[derive(Debug, Clone, Default)]
    pub struct Filter {
        pub classification: Option<Classification>,
        pub service: Option<String>,
        pub event_type: Option<String>,
        pub position: Option<String>,
    }

    impl Filter {
        pub fn matches(&self, e: &Entry) -> bool {
            self.classification
                .is_none_or(|c| c == e.letter.classification)
                && self
                    .service
                    .as_deref()
                    .is_none_or(|s| s == e.letter.failing_service)
                && self
                    .event_type
                    .as_deref()
                    .is_none_or(|t| Some(t) == e.letter.event_type.as_deref())
                && self.position.as_deref().is_none_or(|p| p == e.position)
        }
    }

    /// Reads every dead letter of the namespace, up to the end of the topic as it is now.
    pub async fn read_all(kafka: &KafkaSettings, ns: &Namespace) -> anyhow::Result<Vec<Entry>> {
        let topic = ns.dead_letter_topic();
        let consumer: StreamConsumer = kafka.consumer(
            &format!("{}.sagapayctl.{}", ns, uuid::Uuid::new_v4()),
            "sagapayctl",
        )?;
        let (consumer, ends) = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || -> anyhow::Result<(StreamConsumer, Vec<(i32, i64)>)> {
                let md = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .context("reading the dead-letter topic's metadata")?;
                let partitions: Vec<i32> = md
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                let mut ends = Vec::new();
                let mut tpl = TopicPartitionList::new();
                for p in partitions {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .context("reading watermarks")?;
                    if high > low {
                        ends.push((p, high));
                        tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
                    }
                }
                consumer.assign(&tpl)?;
                Ok((consumer, ends))
            }
        })
        .await??;
        let mut remaining: std::collections::HashMap<i32, i64> = ends.into_iter().collect();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !remaining.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "timed out reading the dead-letter topic");
            let msg = match tokio::time::timeout(left, consumer.recv()).await {
                Ok(m) => m.context("reading a dead letter")?,
                Err(_) => anyhow::bail!("timed out reading the dead-letter topic"),
            };
            let (p, o) = (msg.partition(), msg.offset());
            if let Some(letter) = msg
                .payload()
                .and_then(|b| serde_json::from_slice::<DeadLetter>(b).ok())
            {
                out.push(Entry {
                    position: format!("{p}:{o}"),
                    letter,
                });
            }
            if remaining.get(&p).is_some_and(|end| o + 1 >= *end) {
                remaining.remove(&p);
            }
        }
        out.sort_by_key(|a| a.letter.failed_at);
        Ok(out)
    }

    /// Publishes each entry's original bytes, key and headers to its original topic.
    /// With `dry_run`, only says what it would do.
    pub async fn replay(
        kafka: &KafkaSettings,
        entries: &[Entry],
        dry_run: bool,
    ) -> anyhow::Result<usize> {
        if dry_run {
            return Ok(entries.len());
        }
        let producer: FutureProducer = kafka.producer("sagapayctl")?;
        for e in entries {
            let l = &e.letter;
            anyhow::ensure!(
                !l.original_topic.is_empty(),
                "dead letter {} has no original topic",
                e.position
            );
            let value = l.original_value();
            let key = l.original_key.clone().unwrap_or_default();
            let headers = MessageHeaders(l.original_headers.clone()).to_kafka();
            producer
                .send(
                    FutureRecord::to(&l.original_topic)
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("replaying {} to {}", e.position, l.original_topic))?;
        }
        Ok(entries.len())
    }
}

/// Cross-service reconciliation: the orchestrator's payments against the ledger's postings.
///
/// Rules checked:
/// - a payment that settled (SETTLED, PARTIALLY_REFUNDED, REFUNDED) has exactly one CAPTURE
///   posting, of the payment's amount;
/// - every CAPTURE posting belongs to such a payment (never to a FAILED or REVERSED one, or to
///   a payment the orchestrator does not know);
/// - a SUCCEEDED refund has exactly one REFUND posting of its amount, and every REFUND posting
///   belongs to a SUCCEEDED refund.
///
/// It reads both databases whole (two queries each), which is right for the sizes a test or a
/// daily check sees; at much larger sizes it should compare by time window.
pub mod reconcile {
    use serde::Serialize;
    use sqlx::postgres::PgPoolOptions;
    use std::collections::HashMap;
    use uuid::Uuid;

    #[derive(Debug, Clone, Serialize, PartialEq)]
    pub struct Difference {
        pub payment_id: Uuid,
        pub problem: String,
    }

    #[derive(Debug, Clone, Serialize)]
    pub struct Report {
        pub payments_checked: usize,
        pub postings_checked: usize,
        pub refunds_checked: usize,
        pub differences: Vec<Difference>,
    }

    const SETTLED_STATES: [&str; 3] = ["SETTLED", "PARTIALLY_REFUNDED", "REFUNDED"];

    /// `orchestrator_url` and `ledger_url` are the two services' database URLs.
    pub async fn run(orchestrator_url: &str, ledger_url: &str) -> anyhow::Result<Report> {
        let orch = PgPoolOptions::new()
            .max_connections(1)
            .connect(orchestrator_url)
            .await?;
        let ledger = PgPoolOptions::new()
            .max_connections(1)
            .connect(ledger_url)
            .await?;
        let payments: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT payment_id, status, amount_minor FROM payments")
                .fetch_all(&orch)
                .await?;
        let refunds: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "SELECT refund_id, payment_id, amount_minor FROM refunds WHERE status = 'SUCCEEDED'",
        )
        .fetch_all(&orch)
        .await?;
        let postings: Vec<(Uuid, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT t.payment_id, t.posting_kind, t.amount_minor,
                    COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0)::bigint
               FROM journal_transactions t LEFT JOIN ledger_entries e USING (transaction_id)
              GROUP BY t.transaction_id, t.payment_id, t.posting_kind, t.amount_minor",
        )
        .fetch_all(&ledger)
        .await?;
        orch.close().await;
        ledger.close().await;
        Ok(compare(&payments, &refunds, &postings))
    }

    /// The pure comparison, for tests.
    pub fn compare(
        payments: &[(Uuid, String, i64)],
        refunds: &[(Uuid, Uuid, i64)],
        postings: &[(Uuid, String, Option<i64>, i64)],
    ) -> Report {
        let mut differences = Vec::new();
        let mut captures: HashMap<Uuid, Vec<i64>> = HashMap::new();
        let mut refund_postings: HashMap<String, Vec<i64>> = HashMap::new();
        for (payment_id, kind, amount, debits) in postings {
            // The posted amount is what the entries say (the column is informational).
            let posted = *debits;
            if let Some(recorded) = amount {
                if *recorded != posted {
                    differences.push(Difference {
                        payment_id: *payment_id,
                        problem: format!(
                            "{kind} posting records {recorded} but its entries move {posted}"
                        ),
                    });
                }
            }
            if kind == "CAPTURE" {
                captures.entry(*payment_id).or_default().push(posted);
            } else if let Some(refund_id) = kind.strip_prefix("REFUND:") {
                refund_postings
                    .entry(refund_id.to_owned())
                    .or_default()
                    .push(posted);
            }
        }
        let known: HashMap<Uuid, (&str, i64)> = payments
            .iter()
            .map(|(id, status, amount)| (*id, (status.as_str(), *amount)))
            .collect();
        for (payment_id, status, amount) in payments {
            let posted = captures.get(payment_id).map(Vec::as_slice).unwrap_or(&[]);
            let settled = SETTLED_STATES.contains(&status.as_str());
            match (settled, posted) {
                (true, [one]) if one == amount => {}
                (true, []) => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("{status} but no capture posting"),
                }),
                (true, [one]) => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("{status} for {amount} but the capture posting is {one}"),
                }),
                (true, many) => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("{} capture postings", many.len()),
                }),
                (false, []) => {}
                (false, _) => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("{status} but it has a capture posting"),
                }),
            }
        }
        for payment_id in captures.keys() {
            if !known.contains_key(payment_id) {
                differences.push(Difference {
                    payment_id: *payment_id,
                    problem: "capture posting for a payment the orchestrator does not know".into(),
                });
            }
        }
        for (refund_id, payment_id, amount) in refunds {
            match refund_postings.remove(&refund_id.to_string()).as_deref() {
                Some([one]) if one == amount => {}
                Some(p) => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("refund {refund_id} of {amount} has postings {p:?}"),
                }),
                None => differences.push(Difference {
                    payment_id: *payment_id,
                    problem: format!("refund {refund_id} succeeded but has no posting"),
                }),
            }
        }
        for (refund_id, _) in refund_postings {
            differences.push(Difference {
                payment_id: Uuid::nil(),
                problem: format!("refund posting {refund_id} without a succeeded refund"),
            });
        }
        differences.sort_by(|a, b| (a.payment_id, &a.problem).cmp(&(b.payment_id, &b.problem)));
        Report {
            payments_checked: payments.len(),
            postings_checked: postings.len(),
            refunds_checked: refunds.len(),
            differences,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_each_kind_of_difference() {
            let (a, b, c, d, e) = (
                Uuid::from_u128(1),
                Uuid::from_u128(2),
                Uuid::from_u128(3),
                Uuid::from_u128(4),
                Uuid::from_u128(5),
            );
            let r = Uuid::from_u128(9);
            let payments = vec![
                (a, "SETTLED".to_owned(), 100),
                (b, "SETTLED".to_owned(), 100),
                (c, "FAILED".to_owned(), 100),
                (d, "REFUNDED".to_owned(), 100),
            ];
            let refunds = vec![(r, d, 100)];
            let postings = vec![
                (a, "CAPTURE".to_owned(), Some(100), 100),
                (c, "CAPTURE".to_owned(), Some(100), 100),
                (d, "CAPTURE".to_owned(), Some(100), 100),
                (d, format!("REFUND:{r}"), Some(100), 100),
                (e, "CAPTURE".to_owned(), Some(5), 5),
            ];
            let report = compare(&payments, &refunds, &postings);
            let problems: Vec<(Uuid, &str)> = report
                .differences
                .iter()
                .map(|d| (d.payment_id, d.problem.as_str()))
                .collect();
            assert_eq!(
                problems,
                vec![
                    (b, "SETTLED but no capture posting"),
                    (c, "FAILED but it has a capture posting"),
                    (
                        e,
                        "capture posting for a payment the orchestrator does not know"
                    ),
                ]
            );
            let clean = compare(&payments[..1], &[], &postings[..1]);
            assert!(clean.differences.is_empty());
        }
    }
}
