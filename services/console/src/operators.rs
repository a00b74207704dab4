//! Operators' accounts: a name, a role and an Argon2id hash of a password. `sagapayctl
//! operators create NAME --role admin|viewer` makes one and prints its password once; only the
//! hash is stored. Viewers see every page; admins also act.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and acts.
    Admin,
    /// Sees only.
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => anyhow::bail!("a role is admin or viewer, not {other:?}"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// An operator as listed (never with the hash).
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The development operator, whose password is the development ops key.
pub const DEV_OPERATOR: &str = "ops";

/// An operator's name: 1 to 64 letters, digits and `._@-` (the table checks it too).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// The PHC string of `password` (Argon2id, its default parameters, a random salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

/// A new password: 24 random bytes, URL-safe base64 (32 characters).
pub fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Makes an operator with a new password, returned (to be shown once).
pub async fn create(pool: &PgPool, name: &str, role: Role) -> anyhow::Result<String> {
    anyhow::ensure!(
        valid_name(name),
        "an operator's name is 1 to 64 letters, digits and . _ @ -"
    );
    let password = new_password()?;
    let inserted = sqlx::query(
        "INSERT INTO operators (name, role, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash_password(&password)?)
    .execute(pool)
    .await?;
    anyhow::ensure!(
        inserted.rows_affected() == 1,
        "an operator named {name} exists already"
    );
    Ok(password)
}

/// Makes the development operator `ops` (admin) with the development ops key as its password,
/// once; an existing `ops` is left as it is.
pub async fn seed_development(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO operators (name, role, password_hash) VALUES ($1, 'admin', $2)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(DEV_OPERATOR)
    .bind(hash_password(sagapay_service_kit::ops_auth::DEV_OPS_KEY)?)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every operator, by name.
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<Operator>> {
    type Row = (String, String, DateTime<Utc>, Option<DateTime<Utc>>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT name, role, created_at, disabled_at FROM operators ORDER BY name")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(name, role, created_at, disabled_at)| {
            Ok(Operator {
                name,
                role: Role::parse(&role)?,
                created_at,
                disabled_at,
            })
        })
        .collect()
}

/// Disables an operator: no new login, and its sessions end now.
pub async fn disable(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE operators SET disabled_at = coalesce(disabled_at, now()) WHERE name = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    anyhow::ensure!(updated.rows_affected() == 1, "no operator named {name}");
    sqlx::query("DELETE FROM operator_sessions WHERE operator = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The role of the enabled operator `name` if `password` is theirs. The hash is checked even
/// for an unknown name (against a fixed hash), so the time taken does not say which names
/// exist.
pub async fn verify(pool: &PgPool, name: &str, password: &str) -> anyhow::Result<Option<Role>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT role, password_hash FROM operators WHERE name = $1 AND disabled_at IS NULL",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    let (role, stored) = match row {
        Some((role, hash)) => (Some(role), hash),
        None => (None, UNKNOWN_NAME_HASH.clone()),
    };
    let password = password.to_owned();
    // Argon2 takes tens of milliseconds of CPU: off the async threads.
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await?;
    match (matches, role) {
        (true, Some(role)) => Ok(Some(Role::parse(&role)?)),
        _ => Ok(None),
    }
}

/// A hash of a random password, checked against when the name is unknown.
static UNKNOWN_NAME_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hash_password(&new_password().unwrap_or_default()).unwrap_or_default()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("ops-ann"));
        assert!(valid_name("ann@example.com"));
        assert!(!valid_name(""));
        assert!(!valid_name("ann smith"));
        assert!(!valid_name("<script>"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"correct horsE", &parsed)
            .is_err());
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("admin").unwrap(), Role::Admin);
        assert_eq!(Role::parse("viewer").unwrap(), Role::Viewer);
        assert!(Role::parse("root").is_err());
    }
}
