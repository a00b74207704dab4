//! Merchants and their API keys, as `sagapayctl merchant …` / `sagapayctl key …` manage them.
//!
//! A key is `sk_` followed by 43 URL-safe base64 characters (32 bytes from the operating
//! system's random source). Only its SHA-256 digest and its first characters (to tell keys
//! apart in listings) are stored: the key itself is returned once, by [`create_key`], and can
//! never be shown again. Revoking a key takes effect on the next request, since every request
//! is authenticated against the database.

use crate::auth::hash_key;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Characters of a key kept in clear, to tell keys apart (`sk_` + 5 random characters).
pub const KEY_PREFIX_LEN: usize = 8;
pub const MERCHANT_NAME_MAX: usize = 100;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MerchantRecord {
    pub merchant_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyRecord {
    pub key_id: Uuid,
    pub merchant_id: Uuid,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created: the only time `secret` exists outside the client's hands.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    pub key_id: Uuid,
    pub merchant_id: Uuid,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("merchant name must be 1-{MERCHANT_NAME_MAX} printable characters")]
    InvalidName,
    #[error("a merchant named {0:?} already exists")]
    NameTaken(String),
    #[error("no merchant {0:?}")]
    UnknownMerchant(String),
    #[error("no API key {0}")]
    UnknownKey(Uuid),
    #[error("reading the operating system's random source: {0}")]
    Random(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A new random API key.
pub fn generate_secret() -> Result<String, KeyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(format!(
        "sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Creates a merchant and its first key.
pub async fn create_merchant(
    pool: &PgPool,
    name: &str,
) -> Result<(MerchantRecord, NewKey), KeyError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MERCHANT_NAME_MAX
        || name.chars().any(char::is_control)
    {
        return Err(KeyError::InvalidName);
    }
    let mut tx = pool.begin().await?;
    let merchant: Option<MerchantRecord> = sqlx::query_as(
        "INSERT INTO merchants (merchant_id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO NOTHING
         RETURNING merchant_id, name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let merchant = merchant.ok_or_else(|| KeyError::NameTaken(name.to_owned()))?;
    let key = insert_key(&mut tx, merchant.merchant_id).await?;
    tx.commit().await?;
    Ok((merchant, key))
}

/// A merchant by id or by name.
pub async fn find_merchant(pool: &PgPool, id_or_name: &str) -> Result<MerchantRecord, KeyError> {
    let by_id = Uuid::parse_str(id_or_name).ok();
    sqlx::query_as(
        "SELECT merchant_id, name, created_at FROM merchants
         WHERE merchant_id = $1 OR ($1 IS NULL AND name = $2)",
    )
    .bind(by_id)
    .bind(id_or_name)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| KeyError::UnknownMerchant(id_or_name.to_owned()))
}

pub async fn list_merchants(pool: &PgPool) -> Result<Vec<MerchantRecord>, KeyError> {
    Ok(
        sqlx::query_as("SELECT merchant_id, name, created_at FROM merchants ORDER BY created_at")
            .fetch_all(pool)
            .await?,
    )
}

/// Adds a key to a merchant (a merchant may hold several, to rotate without downtime).
pub async fn create_key(pool: &PgPool, merchant_id: Uuid) -> Result<NewKey, KeyError> {
    let mut tx = pool.begin().await?;
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT merchant_id FROM merchants WHERE merchant_id = $1 FOR SHARE")
            .bind(merchant_id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(KeyError::UnknownMerchant(merchant_id.to_string()));
    }
    let key = insert_key(&mut tx, merchant_id).await?;
    tx.commit().await?;
    Ok(key)
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    merchant_id: Uuid,
) -> Result<NewKey, KeyError> {
    let secret = generate_secret()?;
    let key_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_keys (key_id, merchant_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)",
    )
    .bind(key_id)
    .bind(merchant_id)
    .bind(hash_key(&secret))
    .bind(&secret[..KEY_PREFIX_LEN])
    .execute(&mut **tx)
    .await?;
    Ok(NewKey {
        key_id,
        merchant_id,
        secret,
    })
}

pub async fn list_keys(pool: &PgPool, merchant_id: Uuid) -> Result<Vec<KeyRecord>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT key_id, merchant_id, key_prefix, created_at, revoked_at FROM api_keys
         WHERE merchant_id = $1 ORDER BY created_at",
    )
    .bind(merchant_id)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key; it is refused from the next request on. Revoking twice keeps the first time.
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<KeyRecord, KeyError> {
    sqlx::query_as(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE key_id = $1
         RETURNING key_id, merchant_id, key_prefix, created_at, revoked_at",
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await?
    .ok_or(KeyError::UnknownKey(key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_url_safe() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(a.starts_with("sk_"));
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
