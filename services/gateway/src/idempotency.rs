//! The idempotency fast path in Redis.
//!
//! The first request with a key claims it atomically (`SET … NX PX`), with a fingerprint of
//! the request and a token of its own. When the orchestrator has answered with success, the
//! answer replaces the claim and is kept for 24 hours; a retry with the same key and the same
//! request gets that answer back without reaching the orchestrator, a retry with a different
//! request gets 422, and one that arrives while the first is still in flight gets 409. A
//! failed request gives its claim back (compare-and-delete on its token), so a retry can go.
//!
//! Correctness never depends on Redis: the durable guard is the orchestrator's unique
//! constraint on `(merchant_id, idempotency_key)`. When Redis is unreachable or slow, the
//! request goes the durable path (and is counted in `idempotency_redis_unavailable_total`);
//! after a failure Redis is left alone for a second, so an outage costs one short timeout per
//! second and not one per request. A claim of a gateway that died expires after `claim_ttl`:
//! the longest its request could still be waiting for the orchestrator, and 2 s more. Past
//! that its claimant has given up or is gone, and a retry may go: the orchestrator's unique
//! constraint still answers it once. (A fixed 30 s refused every retry of a merchant whose
//! request a crashed gateway held for half a minute.)
//!
//! A request that went to the orchestrator without an outcome the gateway could read (no
//! answer in time, the connection lost, a 5xx other than `overloaded`) gives its key back like
//! any failure, but leaves a marker beside it (`<key>:forwarded`, kept as long as answers
//! are): the orchestrator may hold the key, so its retry is never shed (see `shedding`). The
//! marker is a key of its own, so an entry keeps its format and a gateway of an earlier
//! version, which never reads the marker, treats the key as before.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a finished answer is replayed.
pub const RESPONSE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the gateway remembers that a key went to the orchestrator with an unknown
/// outcome: as long as an answer would have been replayed.
pub const FORWARDED_TTL: Duration = RESPONSE_TTL;

#[derive(Debug, Clone)]
pub struct IdempotencySettings {
    /// `SAGAPAY_REDIS_URL` (a secret: it holds the password); `None` turns the fast path off.
    pub redis_url: Option<SecretString>,
    /// `SAGAPAY_REDIS_CA_FILE`: a PEM CA trusted for `rediss://` besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Longest wait for one Redis command before going the durable path.
    pub timeout: Duration,
    /// How long an in-flight claim holds a key when its gateway never finishes: the
    /// orchestrator timeout and 2 s.
    pub claim_ttl: Duration,
    /// After a Redis failure, how long requests go the durable path without trying Redis.
    pub backoff: Duration,
}

impl IdempotencySettings {
    /// Settings of a gateway that waits at most `orchestrator_timeout` for its answers.
    pub fn new(redis_url: Option<String>, orchestrator_timeout: Duration) -> Self {
        Self {
            redis_url: redis_url.map(SecretString::from),
            ca_file: None,
            timeout: Duration::from_millis(500),
            claim_ttl: orchestrator_timeout + Duration::from_secs(2),
            backoff: Duration::from_secs(1),
        }
    }
}

/// A client of `url`; over TLS it also trusts the CA in `ca_file` (PEM), a deployment's own.
fn redis_client(url: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<redis::Client> {
    use anyhow::Context;
    let Some(file) = ca_file else {
        return Ok(redis::Client::open(url)?);
    };
    let root_cert =
        std::fs::read(file).with_context(|| format!("SAGAPAY_REDIS_CA_FILE {}", file.display()))?;
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )?)
}

/// What Redis holds under a key.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Fingerprint of the request that claimed the key.
    fp: String,
    /// The claimant's token, while in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// The finished answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<CachedResponse>,
}

/// A finished answer, replayed as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedResponse {
    pub status: u16,
    pub body: String,
}

/// A key this request holds: pass it to [`IdempotencyCache::finish`].
#[derive(Debug)]
pub struct Claim {
    redis_key: String,
    token: String,
    fingerprint: String,
}

impl Claim {
    /// Where [`IdempotencyCache::remember_forwarded`] marks the key.
    fn forwarded_key(&self) -> String {
        format!("{}:forwarded", self.redis_key)
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Begin {
    /// The key is this request's: forward it, then `finish`.
    Claimed(Claim),
    /// The same request already finished: answer this.
    Replay(CachedResponse),
    /// The key belongs to a different request.
    Reused,
    /// The same request is still in flight.
    InFlight,
    /// No answer from Redis: forward; the orchestrator's unique constraint decides. When the
    /// claim was sent but its answer was lost, the claim may exist: pass it to `finish` so it
    /// is completed or given back instead of blocking retries until it expires.
    Durable(Option<Claim>),
}

#[derive(Clone)]
struct Metrics {
    outcomes: IntCounterVec,
    redis_unavailable: IntCounter,
}

pub struct IdempotencyCache {
    conn: Option<ConnectionManager>,
    prefix: String,
    settings: IdempotencySettings,
    /// Set after a Redis failure: until then, requests go the durable path.
    resting_until: Mutex<Option<Instant>>,
    metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
enum RedisTrouble {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreadable entry: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl IdempotencyCache {
    /// Never fails on an unreachable Redis: the connection is made on first use.
    pub fn new(
        namespace: &str,
        settings: IdempotencySettings,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "idempotency_requests_total",
                    "Requests with an idempotency key, by what the fast path decided \
                     (claimed, replayed, reused, in_flight, durable)",
                ),
                &["outcome"],
            )?,
            redis_unavailable: IntCounter::new(
                "idempotency_redis_unavailable_total",
                "Requests served through the durable path because Redis did not answer",
            )?,
        };
        registry.register(Box::new(metrics.outcomes.clone()))?;
        registry.register(Box::new(metrics.redis_unavailable.clone()))?;
        for outcome in ["claimed", "replayed", "reused", "in_flight", "durable"] {
            metrics.outcomes.with_label_values(&[outcome]).inc_by(0);
        }
        let conn = match &settings.redis_url {
            None => None,
            Some(url) => {
                let client = redis_client(url.expose_secret(), settings.ca_file.as_deref())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.timeout))
                    .set_response_timeout(Some(settings.timeout))
                    .set_number_of_retries(1);
                Some(ConnectionManager::new_lazy_with_config(client, config)?)
            }
        };
        Ok(Self {
            conn,
            // `v3`: fingerprints are the requests' own (`sagapay_api_models::requests`), the
            // orchestrator's too; an entry of an earlier format is never compared with a new
            // one (a retry across the upgrade goes the durable path, which answers it).
            prefix: format!("{namespace}:idempotency:v3"),
            settings,
            resting_until: Mutex::new(None),
            metrics,
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics.outcomes.with_label_values(&[outcome]).inc();
    }

    fn resting(&self) -> bool {
        let mut until = self.resting_until.lock().expect("lock poisoned");
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn trouble(&self, what: &str, e: &RedisTrouble) {
        let mut until = self.resting_until.lock().expect("lock poisoned");
        if until.is_none() {
            tracing::warn!(error = %e, during = what, backoff_ms = self.settings.backoff.as_millis() as u64,
                "Redis unavailable: idempotency goes the durable path");
        }
        *until = Some(Instant::now() + self.settings.backoff);
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &ConnectionManager,
        cmd: redis::Cmd,
    ) -> Result<T, RedisTrouble> {
        let mut conn = conn.clone();
        match tokio::time::timeout(self.settings.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisTrouble::Timeout(self.settings.timeout)),
        }
    }

    /// `scope` names the route family (`payments`, `refunds:<payment_id>`); keys are scoped to
    /// the merchant and the scope, and hashed (a client's key may hold any printable text).
    pub async fn begin(
        &self,
        merchant_id: Uuid,
        scope: &str,
        idempotency_key: &str,
        fingerprint: &str,
    ) -> Begin {
        let Some(conn) = &self.conn else {
            self.count("durable");
            return Begin::Durable(None);
        };
        if self.resting() {
            self.count("durable");
            self.metrics.redis_unavailable.inc();
            return Begin::Durable(None);
        }
        let redis_key = format!(
            "{}:{merchant_id}:{scope}:{}",
            self.prefix,
            hex::encode(Sha256::digest(idempotency_key.as_bytes()))
        );
        let claim = Claim {
            redis_key,
            token: Uuid::new_v4().simple().to_string(),
            fingerprint: fingerprint.to_owned(),
        };
        match self.try_begin(conn, &claim).await {
            Ok(Some(begin)) => {
                self.count(match &begin {
                    Begin::Claimed(_) => "claimed",
                    Begin::Replay(_) => "replayed",
                    Begin::Reused => "reused",
                    Begin::InFlight => "in_flight",
                    Begin::Durable(_) => "durable",
                });
                begin
            }
            // The key was claimed by this request.
            Ok(None) => {
                self.count("claimed");
                Begin::Claimed(claim)
            }
            Err(e) => {
                self.trouble("claim", &e);
                self.count("durable");
                self.metrics.redis_unavailable.inc();
                Begin::Durable(Some(claim))
            }
        }
    }

    /// `None` when `claim` took the key; otherwise what the key holds says what to do.
    async fn try_begin(
        &self,
        conn: &ConnectionManager,
        claim: &Claim,
    ) -> Result<Option<Begin>, RedisTrouble> {
        let value = serde_json::to_string(&Entry {
            fp: claim.fingerprint.clone(),
            token: Some(claim.token.clone()),
            response: None,
        })?;
        let mut set = redis::cmd("SET");
        set.arg(&claim.redis_key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.settings.claim_ttl.as_millis() as u64);
        let claimed: Option<String> = self.run(conn, set).await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let mut get = redis::cmd("GET");
        get.arg(&claim.redis_key);
        let held: Option<String> = self.run(conn, get).await?;
        // Gone between the two commands (expired or given back): let the durable path decide.
        let Some(held) = held else {
            return Ok(Some(Begin::Durable(None)));
        };
        let entry: Entry = serde_json::from_str(&held)?;
        Ok(Some(if entry.fp != claim.fingerprint {
            Begin::Reused
        } else if let Some(response) = entry.response {
            Begin::Replay(response)
        } else {
            Begin::InFlight
        }))
    }

    /// Records the answer of a claimed request: a success is kept for replay, anything else
    /// gives the key back so that a retry can go through. Both happen only while the key still
    /// holds this request's claim (checked inside Redis), so nothing of another request's is
    /// ever overwritten. It is attempted even while the fast path rests after a failure
    /// elsewhere: skipping it would leave this request's claim to answer 409 to every retry
    /// until the claim expires. A failed attempt is made once more (the compare-and-set makes
    /// a repeat harmless).
    pub async fn finish(&self, claim: Claim, answer: Option<CachedResponse>) {
        let Some(conn) = &self.conn else { return };
        let token_marker = format!("\"token\":\"{}\"", claim.token);
        let mut cmd = redis::cmd("EVAL");
        match answer {
            Some(response) if (200..300).contains(&response.status) => {
                let entry = Entry {
                    fp: claim.fingerprint,
                    token: None,
                    response: Some(response),
                };
                let value = match serde_json::to_string(&entry) {
                    Ok(value) => value,
                    Err(e) => return self.trouble("finish", &e.into()),
                };
                cmd.arg(COMPLETE_SCRIPT)
                    .arg(1)
                    .arg(&claim.redis_key)
                    .arg(token_marker)
                    .arg(value)
                    .arg(RESPONSE_TTL.as_millis() as u64);
            }
            _ => {
                cmd.arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(&claim.redis_key)
                    .arg(token_marker);
            }
        }
        let mut result = self.run::<i64>(conn, cmd.clone()).await;
        if result.is_err() {
            result = self.run::<i64>(conn, cmd).await;
        }
        if let Err(e) = result {
            // The claim expires on its own; the durable guard holds meanwhile.
            self.trouble("finish", &e);
        }
    }

    /// Remembers that `claim`'s request went to the orchestrator and its outcome is unknown
    /// here: the orchestrator may hold the key, so a retry must reach it even while this
    /// gateway sheds. Call it before [`IdempotencyCache::finish`] gives the key back, so that a
    /// retry never finds neither. Best effort: one attempt, none while Redis rests (a retry
    /// that finds no marker is shed as before, and comes back after `Retry-After`).
    pub async fn remember_forwarded(&self, claim: &Claim) {
        let Some(conn) = &self.conn else { return };
        if self.resting() {
            return;
        }
        let mut set = redis::cmd("SET");
        set.arg(claim.forwarded_key())
            .arg("1")
            .arg("PX")
            .arg(FORWARDED_TTL.as_millis() as u64);
        if let Err(e) = self.run::<()>(conn, set).await {
            self.trouble("remember forwarded", &e);
        }
    }

    /// Whether an earlier attempt with `claim`'s key went to the orchestrator with an unknown
    /// outcome (asked only while shedding). When Redis does not answer: true, the request is
    /// forwarded; one call to the orchestrator costs less than refusing a merchant a payment
    /// the orchestrator may hold.
    pub async fn was_forwarded(&self, claim: &Claim) -> bool {
        let Some(conn) = &self.conn else { return true };
        let mut exists = redis::cmd("EXISTS");
        exists.arg(claim.forwarded_key());
        match self.run::<i64>(conn, exists).await {
            Ok(found) => found > 0,
            Err(e) => {
                self.trouble("was forwarded", &e);
                true
            }
        }
    }
}

/// Replaces KEYS[1] with ARGV[2] (for ARGV[3] ms) if it still holds the claim marked ARGV[1].
const COMPLETE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// Deletes KEYS[1] if its value contains ARGV[1] (the claimant's token).
const RELEASE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_and_an_answer_read_back() {
        let claim = Entry {
            fp: "f".into(),
            token: Some("t".into()),
            response: None,
        };
        let text = serde_json::to_string(&claim).unwrap();
        assert!(text.contains("\"token\":\"t\""));
        let back: Entry = serde_json::from_str(&text).unwrap();
        assert!(back.response.is_none());
        let done = Entry {
            fp: "f".into(),
            token: None,
            response: Some(CachedResponse {
                status: 201,
                body: "{}".into(),
            }),
        };
        let back: Entry = serde_json::from_str(&serde_json::to_string(&done).unwrap()).unwrap();
        assert_eq!(back.response.unwrap().status, 201);
    }

    #[test]
    fn the_forwarded_marker_sits_beside_its_key() {
        let claim = Claim {
            redis_key: "ns:idempotency:v3:m:payments:abc".into(),
            token: "t".into(),
            fingerprint: "f".into(),
        };
        assert_eq!(
            claim.forwarded_key(),
            "ns:idempotency:v3:m:payments:abc:forwarded"
        );
        // An entry's key ends in the key's hash: never in `:forwarded`.
        assert_ne!(claim.forwarded_key(), claim.redis_key);
    }
}
