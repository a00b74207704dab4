//! API keys: stored as SHA-256 hashes, looked up by hash. Looking up by hash means the
//! comparison never touches the secret itself, so its timing reveals nothing about the key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sagapay_service_kit::ApiError;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const DEV_MERCHANT_NAME: &str = "dev-merchant";

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The merchant a request is authenticated as.
#[derive(Debug, Clone, Copy)]
pub struct Merchant {
    pub merchant_id: Uuid,
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

pub async fn authenticate(pool: &PgPool, key: &str) -> Result<Option<Merchant>, sqlx::Error> {
    let merchant_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_key(key))
    .fetch_optional(pool)
    .await?;
    Ok(merchant_id.map(|merchant_id| Merchant { merchant_id }))
}

/// Something that can authenticate: the router's state.
pub trait KeyStore {
    fn key_pool(&self) -> &PgPool;
}

impl<S: KeyStore + Send + Sync> FromRequestParts<S> for Merchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| ApiError::unauthorized("missing or malformed x-api-key header"))?;
        authenticate(state.key_pool(), key)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))
    }
}
