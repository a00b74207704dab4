//! API keys: stored as SHA-256 hashes, looked up by hash. Looking up by hash means no
//! comparison ever touches the secret itself, so its timing reveals nothing about the key; the
//! digest found is compared again in constant time before it is trusted. A key found is
//! trusted for at most a second without asking again (`keycache`), so a revoked key is
//! refused within a second; a key not cached is looked up only within its client address's
//! budget.
//! Merchants and keys are managed by `keys` (through `sagapayctl`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sagapay_service_kit::ApiError;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const DEV_MERCHANT_NAME: &str = "dev-merchant";

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The merchant a request is authenticated as, and the key it used.
#[derive(Debug, Clone, Copy)]
pub struct Merchant {
    pub merchant_id: Uuid,
    pub key_id: Uuid,
}

/// Creates the development merchant and its key (idempotent). Development mode only.
pub async fn seed_dev_merchant(pool: &PgPool, key: &str) -> anyhow::Result<Uuid> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO merchants (merchant_id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(DEV_MERCHANT_NAME)
    .execute(&mut *tx)
    .await?;
    let merchant_id: Uuid = sqlx::query_scalar("SELECT merchant_id FROM merchants WHERE name = $1")
        .bind(DEV_MERCHANT_NAME)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO api_keys (key_id, merchant_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key_hash) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(merchant_id)
    .bind(hash_key(key))
    .bind(key.chars().take(4).collect::<String>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(merchant_id)
}

/// The merchant whose live key has this digest. In production the development merchant's
/// keys do not authenticate, even if a development run seeded one into this database.
async fn authenticate_digest(
    pool: &PgPool,
    digest: &[u8],
    production: bool,
) -> Result<Option<Merchant>, sqlx::Error> {
    let found: Option<(Uuid, Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT k.merchant_id, k.key_id, k.key_hash
           FROM api_keys k JOIN merchants m USING (merchant_id)
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL
            AND NOT ($2 AND m.name = $3)",
    )
    .bind(digest)
    .bind(production)
    .bind(DEV_MERCHANT_NAME)
    .fetch_optional(pool)
    .await?;
    Ok(found
        .filter(|(_, _, stored)| sagapay_service_kit::constant_time::bytes_equal(stored, digest))
        .map(|(merchant_id, key_id, _)| Merchant {
            merchant_id,
            key_id,
        }))
}

/// What authentication needs from the router's state.
pub trait KeyStore {
    fn key_pool(&self) -> &PgPool;
    fn rate_limit(&self) -> &crate::ratelimit::RateLimit;
    fn key_cache(&self) -> &crate::keycache::KeyCache<Merchant>;
    fn lookup_budget(&self) -> &crate::ratelimit::RateLimit<std::net::IpAddr>;
    /// Production mode: the development merchant's keys are refused.
    fn production(&self) -> bool;
}

/// Authenticates the request (from the cache, or from the database within the client
/// address's lookup budget), then takes one token from its key's rate-limit bucket.
impl<S: KeyStore + Send + Sync> FromRequestParts<S> for Merchant {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| {
                ApiError::unauthorized("missing or malformed x-api-key header").into_response()
            })?;
        let digest = hash_key(key);
        let merchant = match state.key_cache().get(&digest) {
            Some(m) => m,
            None => look_up(state, parts, digest).await?,
        };
        let remaining = state
            .rate_limit()
            .check(merchant.key_id)
            .map_err(|retry_after_s| state.rate_limit().refusal(retry_after_s))?;
        if let Some(slot) = parts.extensions.get::<crate::ratelimit::QuotaSlot>() {
            let _ = slot.0.set((state.rate_limit().burst(), remaining));
        }
        Ok(merchant)
    }
}

/// The merchant of a key the cache does not hold: the answer of the lookup of that key
/// already running, or a lookup of this request's own, within its address's budget and the
/// instance's lookup slots (see `keycache`).
async fn look_up<S: KeyStore>(
    state: &S,
    parts: &Parts,
    digest: [u8; 32],
) -> Result<Merchant, axum::response::Response> {
    use crate::keycache::{follow, Flight};
    use axum::response::IntoResponse;
    // A leader that goes without an answer (its own request refused or cancelled) leaves its
    // followers to look again; twice is enough for that to be rare, then the request is
    // answered as unavailable rather than queued.
    for _ in 0..3 {
        let leader = match state.key_cache().flight(digest) {
            Flight::Follow(answer) => match follow(answer).await {
                Some(found) => return merchant_found(found).map_err(|e| e.into_response()),
                None => continue,
            },
            Flight::Lead(leader) => leader,
        };
        // Before any database work: a flood of unknown keys from one address stops here.
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(address) = peer {
            state
                .lookup_budget()
                .check(address)
                .map_err(lookup_refusal)?;
        }
        // Across all addresses: a few lookups at once, never a queue for connections.
        let permit = state.key_cache().lookup_permit().ok_or_else(|| {
            crate::ratelimit::too_many_requests(
                "too_many_key_lookups",
                "too many requests with API keys not recently seen; retry in 1 s",
                1,
            )
        })?;
        let found = authenticate_digest(state.key_pool(), &digest, state.production()).await;
        drop(permit);
        return match found {
            Ok(found) => {
                leader.finish(Ok(found));
                merchant_found(Ok(found)).map_err(|e| e.into_response())
            }
            Err(e) => {
                leader.finish(Err(()));
                Err(ApiError::from(e).into_response())
            }
        };
    }
    Err(key_check_unavailable().into_response())
}

/// 503 for a request whose key could not be checked (the database did not answer).
fn key_check_unavailable() -> ApiError {
    ApiError::unavailable(
        "database_unavailable",
        "the API key could not be checked now; retry later",
    )
}

/// The answer to a request whose key's lookup found `found`.
fn merchant_found(found: crate::keycache::Found<Merchant>) -> Result<Merchant, Box<ApiError>> {
    match found {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Box::new(ApiError::unauthorized("invalid API key"))),
        Err(()) => Err(Box::new(key_check_unavailable())),
    }
}

/// 429 for an address that spent its budget of key lookups.
fn lookup_refusal(retry_after_s: u64) -> axum::response::Response {
    crate::ratelimit::too_many_requests(
        "too_many_key_lookups",
        &format!(
            "too many requests with API keys not recently seen from this address; retry in {retry_after_s} s"
        ),
        retry_after_s,
    )
}
