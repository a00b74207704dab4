//! Sending webhook deliveries: claim what is due, POST it signed, record the outcome.
//!
//! Safe with several instances: a claim is a lease (`claimed_until`) taken with
//! `FOR UPDATE SKIP LOCKED`, so two dispatchers never send the same delivery at once, and a
//! crashed dispatcher's deliveries come back when the lease lapses (the receiver may then
//! see the event twice, with the same id: deliveries are at least once, and receivers
//! deduplicate by event id).
//!
//! Slow or dead endpoints delay no one else: every delivery runs in a task of its own with a
//! timeout that bounds all of it (the lookup of the receiver's address, the connection, TLS
//! and the answer; see `client`), at most `endpoint_concurrency` at once per endpoint and
//! `merchant_concurrency` per merchant (an endpoint or merchant at its bound is not claimed
//! for again until deliveries finish), and `in_flight` in all: one merchant with many slow
//! endpoints holds at most its share of the instance, and every other merchant's deliveries
//! keep going. A claim's lease outlives the longest attempt, so a delivery is never sent
//! again while its first attempt may still be running. A failure is retried with exponential
//! backoff until `retry_for` after the event; an endpoint with no success for `disable_after`
//! is disabled (its pending deliveries then fail).

use crate::destination;
use crate::WebhookSettings;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use sagapay_messaging::wakeup::Wakeup;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a claim lasts: the longest attempt (the timeout bounds all of it), and as long
/// again plus 5 s to record its outcome.
fn lease(settings: &WebhookSettings) -> Duration {
    settings.timeout * 2 + Duration::from_secs(5)
}

/// Deliveries in flight on this instance, per endpoint and per merchant.
#[derive(Debug, Default)]
struct InFlight {
    endpoints: HashMap<Uuid, usize>,
    merchants: HashMap<Uuid, usize>,
}

impl InFlight {
    fn started(&mut self, endpoint: Uuid, merchant: Uuid) {
        *self.endpoints.entry(endpoint).or_default() += 1;
        *self.merchants.entry(merchant).or_default() += 1;
    }

    fn finished(&mut self, endpoint: Uuid, merchant: Uuid) {
        for (map, key) in [
            (&mut self.endpoints, endpoint),
            (&mut self.merchants, merchant),
        ] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The wait before attempt `attempts + 1` after `attempts` failed ones: `initial` doubled
/// per failure, at most `max`.
pub fn retry_delay(attempts: i32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 64) as usize;
    sagapay_messaging::failure::retry_delays(initial, max)
        .nth(doublings)
        .unwrap_or(max)
}

#[derive(Clone)]
pub struct WebhookMetrics {
    /// `webhook_deliveries_total{outcome}`: delivered, retried (failed, will try again),
    /// failed (given up).
    pub outcomes: IntCounterVec,
    pub latency: HistogramVec,
    /// Deliveries waiting to be sent, and the age of the oldest (refreshed each cycle).
    pub backlog: IntGauge,
    pub oldest_age_seconds: IntGauge,
    pub endpoints_disabled: IntCounterVec,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
            ),
            &["outcome"],
        )?;
        for o in ["delivered", "retried", "failed"] {
            outcomes.with_label_values(&[o]).inc_by(0);
        }
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "webhook_delivery_seconds",
                "Time from sending a webhook to the receiver's answer",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["outcome"],
        )?;
        let backlog = IntGauge::new(
            "webhook_backlog",
            "Webhook deliveries waiting to be sent (due or scheduled)",
        )?;
        let oldest_age_seconds = IntGauge::new(
            "webhook_backlog_oldest_seconds",
            "Age of the oldest webhook delivery still waiting",
        )?;
        let endpoints_disabled = IntCounterVec::new(
            Opts::new(
                "webhook_endpoints_disabled_total",
                "Endpoints disabled after failing for too long",
            ),
            &["reason"],
        )?;
        endpoints_disabled.with_label_values(&["failing"]).inc_by(0);
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        registry.register(Box::new(oldest_age_seconds.clone()))?;
        registry.register(Box::new(endpoints_disabled.clone()))?;
        Ok(Self {
            outcomes,
            latency,
            backlog,
            oldest_age_seconds,
            endpoints_disabled,
        })
    }
}

pub struct Dispatcher {
    pub pool: PgPool,
    pub settings: WebhookSettings,
    pub metrics: WebhookMetrics,
    pub wakeup: Wakeup,
    /// The delivery client (`crate::client::build`).
    pub client: reqwest::Client,
}

/// One claimed delivery.
struct Claimed {
    delivery_id: Uuid,
    endpoint_id: Uuid,
    merchant_id: Uuid,
    attempts: i32,
    url: String,
    secrets: Vec<String>,
    body: String,
    /// Why it will not be sent: the endpoint was deleted or disabled after the delivery
    /// was created.
    gone: Option<String>,
    event_created_at: chrono::DateTime<chrono::Utc>,
}

/// What one attempt came to.
struct Attempt {
    status_code: Option<u16>,
    error: Option<String>,
    latency: Duration,
}

impl Attempt {
    fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

impl Dispatcher {
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let in_flight: Arc<Mutex<InFlight>> = Arc::default();
        let finished = Arc::new(tokio::sync::Notify::new());
        let permits = Arc::new(tokio::sync::Semaphore::new(self.settings.in_flight));
        let this = Arc::new(Shared {
            pool: self.pool.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            client: self.client.clone(),
        });
        let mut last_housekeeping = Instant::now() - Duration::from_secs(3600);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if last_housekeeping.elapsed() >= Duration::from_secs(5) {
                last_housekeeping = Instant::now();
                if let Err(e) = this.housekeeping().await {
                    tracing::warn!(error = %e, "webhook housekeeping failed");
                }
            }
            let free = permits.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let busy = {
                    let f = in_flight.lock().expect("lock");
                    Busy {
                        endpoints: f.endpoints.iter().map(|(id, n)| (*id, *n)).collect(),
                        merchants: f.merchants.iter().map(|(id, n)| (*id, *n)).collect(),
                    }
                };
                match this.claim(&busy, free).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed");
                        Vec::new()
                    }
                }
            };
            let got = claimed.len();
            for delivery in claimed {
                let permit = permits.clone().acquire_owned().await?;
                let (endpoint, merchant) = (delivery.endpoint_id, delivery.merchant_id);
                in_flight.lock().expect("lock").started(endpoint, merchant);
                let (this, in_flight, finished) =
                    (this.clone(), in_flight.clone(), finished.clone());
                tokio::spawn(async move {
                    if let Err(e) = this.deliver(delivery).await {
                        tracing::warn!(error = %e, "recording a webhook delivery failed");
                    }
                    in_flight.lock().expect("lock").finished(endpoint, merchant);
                    drop(permit);
                    finished.notify_one();
                });
            }
            if got > 0 {
                continue;
            }
            // Nothing due: wait for a new delivery, a finished one (its endpoint may have
            // more), a retry coming due (polled), or shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.wakeup.next_or(Some(
                    tokio::time::Instant::now() + self.settings.poll_interval,
                )) => {}
                _ = finished.notified() => {}
            }
        }
    }
}

/// Deliveries in flight per endpoint and per merchant, as the claim counts them.
struct Busy {
    endpoints: Vec<(Uuid, usize)>,
    merchants: Vec<(Uuid, usize)>,
}

struct Shared {
    pool: PgPool,
    settings: WebhookSettings,
    metrics: WebhookMetrics,
    client: reqwest::Client,
}

impl Shared {
    /// Leases up to `limit` due deliveries, at most `endpoint_concurrency` per endpoint and
    /// `merchant_concurrency` per merchant, counting the deliveries in flight (`busy`).
    async fn claim(&self, busy: &Busy, limit: usize) -> sqlx::Result<Vec<Claimed>> {
        let per_endpoint = self.settings.endpoint_concurrency;
        let per_merchant = self.settings.merchant_concurrency;
        let full = |counts: &[(Uuid, usize)], bound: usize| -> Vec<Uuid> {
            counts
                .iter()
                .filter(|(_, n)| *n >= bound)
                .map(|(id, _)| *id)
                .collect()
        };
        let (full_endpoints, full_merchants) = (
            full(&busy.endpoints, per_endpoint),
            full(&busy.merchants, per_merchant),
        );
        let split = |counts: &[(Uuid, usize)]| -> (Vec<Uuid>, Vec<i64>) {
            counts.iter().map(|(id, n)| (*id, *n as i64)).unzip()
        };
        let (endpoint_ids, endpoint_counts) = split(&busy.endpoints);
        let (merchant_ids, merchant_counts) = split(&busy.merchants);
        let rows = sqlx::query(
            "WITH candidates AS (
                 SELECT d.delivery_id, d.endpoint_id, e.merchant_id, d.next_attempt_at
                   FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id)
                  WHERE d.status = 'PENDING' AND d.next_attempt_at <= now()
                    AND (d.claimed_until IS NULL OR d.claimed_until < now())
                    AND NOT (d.endpoint_id = ANY ($1)) AND NOT (e.merchant_id = ANY ($7))
                  ORDER BY d.next_attempt_at
                  LIMIT 256
                  FOR UPDATE OF d SKIP LOCKED),
             picked AS (
                 SELECT delivery_id FROM (
                     SELECT delivery_id, endpoint_id, merchant_id, next_attempt_at,
                            row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at)
                                AS nth_of_endpoint,
                            row_number() OVER (PARTITION BY merchant_id ORDER BY next_attempt_at)
                                AS nth_of_merchant
                       FROM candidates) c
                  WHERE nth_of_endpoint <= $2 - coalesce(
                            (SELECT b.n FROM unnest($5::uuid[], $6::int8[]) AS b(id, n)
                              WHERE b.id = c.endpoint_id), 0)
                    AND nth_of_merchant <= $8 - coalesce(
                            (SELECT b.n FROM unnest($9::uuid[], $10::int8[]) AS b(id, n)
                              WHERE b.id = c.merchant_id), 0)
                  ORDER BY next_attempt_at
                  LIMIT $3)
             UPDATE webhook_deliveries d
                SET claimed_until = now() + make_interval(secs => $4)
               FROM picked, webhook_endpoints e, merchant_events ev
              WHERE d.delivery_id = picked.delivery_id
                AND e.endpoint_id = d.endpoint_id AND ev.event_id = d.event_id
             RETURNING d.delivery_id, d.endpoint_id, e.merchant_id, d.attempts, e.url, e.secret,
                       CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END
                           AS previous_secret,
                       CASE WHEN e.deleted_at IS NOT NULL THEN 'endpoint deleted'
                            WHEN e.disabled_at IS NOT NULL THEN 'endpoint disabled' END AS gone,
                       ev.body::text AS body, ev.created_at AS event_created_at",
        )
        .bind(&full_endpoints)
        .bind(per_endpoint as i64)
        .bind(limit as i64)
        .bind(lease(&self.settings).as_secs_f64())
        .bind(&endpoint_ids)
        .bind(&endpoint_counts)
        .bind(&full_merchants)
        .bind(per_merchant as i64)
        .bind(&merchant_ids)
        .bind(&merchant_counts)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let gone: Option<String> = r.try_get("gone")?;
                let mut secrets = vec![r.try_get::<String, _>("secret")?];
                secrets.extend(r.try_get::<Option<String>, _>("previous_secret")?);
                Ok(Claimed {
                    delivery_id: r.try_get("delivery_id")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    merchant_id: r.try_get("merchant_id")?,
                    attempts: r.try_get("attempts")?,
                    url: r.try_get("url")?,
                    secrets,
                    body: r.try_get("body")?,
                    gone,
                    event_created_at: r.try_get("event_created_at")?,
                })
            })
            .collect()
    }

    async fn deliver(&self, d: Claimed) -> sqlx::Result<()> {
        if let Some(why) = &d.gone {
            return self.give_up(&d, why).await;
        }
        let attempt = self.send(&d).await;
        self.record(&d, &attempt).await
    }

    /// One POST of the event, signed, within the timeout (which bounds the lookup of the
    /// receiver's address too); never an error (a failure is an outcome). Under the
    /// production policy the client's resolver refuses names of private addresses, and an
    /// address written in the URL is checked here.
    async fn send(&self, d: &Claimed) -> Attempt {
        let started = Instant::now();
        let failed = |error: String| Attempt {
            status_code: None,
            error: Some(error),
            latency: started.elapsed(),
        };
        let url = match destination::check_syntax(&d.url, &self.settings.policy) {
            Ok(u) => u,
            Err(e) => return failed(e.to_string()),
        };
        if let Some(ip) = destination::literal_ip(&url) {
            if !self.settings.policy.permits(ip) {
                return failed(destination::DestinationError::NotPublic(ip).to_string());
            }
        }
        let now = chrono::Utc::now().timestamp();
        let secrets: Vec<&str> = d.secrets.iter().map(String::as_str).collect();
        let signature = crate::signature::header(&secrets, now, d.body.as_bytes());
        let result = self
            .client
            .post(url)
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "SagaPay-Webhooks/1")
            .header(crate::signature::HEADER, signature)
            .body(d.body.clone())
            .send()
            .await;
        match result {
            Ok(resp) => Attempt {
                status_code: Some(resp.status().as_u16()),
                error: None,
                latency: started.elapsed(),
            },
            Err(e) if e.is_timeout() => failed(format!(
                "no answer within {} ms",
                self.settings.timeout.as_millis()
            )),
            Err(e) => failed(crate::client::describe(&e)),
        }
    }

    /// The attempt, the delivery's new state and the endpoint's health, in one transaction.
    async fn record(&self, d: &Claimed, a: &Attempt) -> sqlx::Result<()> {
        let attempts = d.attempts + 1;
        let delay = retry_delay(
            attempts,
            self.settings.retry_initial,
            self.settings.retry_max,
        );
        let give_up_at = d.event_created_at
            + chrono::Duration::from_std(self.settings.retry_for).unwrap_or(chrono::Duration::MAX);
        let next_at =
            chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let outcome = if a.delivered() {
            "delivered"
        } else if next_at > give_up_at {
            "failed"
        } else {
            "retried"
        };
        let latency_ms = a.latency.as_millis().min(i32::MAX as u128) as i32;
        let error = a.error.clone().or_else(|| {
            a.status_code
                .filter(|_| !a.delivered())
                .map(|c| format!("answered {c}"))
        });
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, latency_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(d.delivery_id)
        .bind(attempts)
        .bind(a.status_code.map(i32::from))
        .bind(error.as_deref())
        .bind(latency_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries
                SET attempts = $2, claimed_until = NULL, last_attempt_at = now(),
                    last_status_code = $3, last_error = $4, last_latency_ms = $5,
                    status = (CASE $6 WHEN 'delivered' THEN 'DELIVERED'
                                      WHEN 'failed' THEN 'FAILED' ELSE 'PENDING' END)::webhook_delivery_status,
                    delivered_at = CASE WHEN $6 = 'delivered' THEN now() END,
                    next_attempt_at = CASE WHEN $6 = 'retried' THEN $7 ELSE next_attempt_at END
              WHERE delivery_id = $1",
        )
        .bind(d.delivery_id)
        .bind(attempts)
        .bind(a.status_code.map(i32::from))
        .bind(error.as_deref())
        .bind(latency_ms)
        .bind(outcome)
        .bind(next_at)
        .execute(&mut *tx)
        .await?;
        let disabled = if a.delivered() {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = NULL
                  WHERE endpoint_id = $1 AND failing_since IS NOT NULL",
            )
            .bind(d.endpoint_id)
            .execute(&mut *tx)
            .await?;
            false
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints
                    SET failing_since = coalesce(failing_since, now()),
                        disabled_at = CASE WHEN failing_since < now() - make_interval(secs => $2)
                                           THEN now() END,
                        disabled_reason = CASE WHEN failing_since < now() - make_interval(secs => $2)
                                               THEN 'no successful delivery since ' || failing_since END
                  WHERE endpoint_id = $1 AND disabled_at IS NULL
                RETURNING disabled_at IS NOT NULL AS disabled",
            )
            .bind(d.endpoint_id)
            .bind(self.settings.disable_after.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<bool, _>("disabled"))
            .unwrap_or(false)
        };
        tx.commit().await?;
        self.metrics.outcomes.with_label_values(&[outcome]).inc();
        self.metrics
            .latency
            .with_label_values(&[if a.delivered() { "delivered" } else { "failed" }])
            .observe(a.latency.as_secs_f64());
        if disabled {
            self.metrics
                .endpoints_disabled
                .with_label_values(&["failing"])
                .inc();
            tracing::warn!(endpoint_id = %d.endpoint_id, "webhook endpoint disabled after failing for too long");
        }
        if outcome == "failed" {
            tracing::warn!(delivery_id = %d.delivery_id, attempts, "webhook delivery given up");
        }
        Ok(())
    }

    /// A delivery whose endpoint went away: failed, never sent.
    async fn give_up(&self, d: &Claimed, why: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'FAILED', claimed_until = NULL, last_error = $2
              WHERE delivery_id = $1",
        )
        .bind(d.delivery_id)
        .bind(why)
        .execute(&self.pool)
        .await?;
        self.metrics.outcomes.with_label_values(&["failed"]).inc();
        Ok(())
    }

    /// The backlog gauges, and events past their retention removed (their deliveries and
    /// attempts with them).
    async fn housekeeping(&self) -> sqlx::Result<()> {
        let (backlog, oldest_s): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
               FROM webhook_deliveries WHERE status = 'PENDING'",
        )
        .fetch_one(&self.pool)
        .await?;
        self.metrics.backlog.set(backlog);
        self.metrics
            .oldest_age_seconds
            .set(oldest_s.unwrap_or(0.0) as i64);
        sqlx::query(
            "DELETE FROM merchant_events WHERE event_id IN (
                 SELECT event_id FROM merchant_events
                  WHERE created_at < now() - make_interval(secs => $1) LIMIT 1000)",
        )
        .bind(self.settings.event_retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let (initial, max) = (Duration::from_secs(60), Duration::from_secs(6 * 3600));
        for (attempts, expected_s) in [
            (1, 60),
            (2, 120),
            (3, 240),
            (8, 7680),
            (9, 15360),
            (10, 21600),
            (1000, 21600),
        ] {
            assert_eq!(
                retry_delay(attempts, initial, max),
                Duration::from_secs(expected_s),
                "after {attempts}"
            );
        }
    }
}
