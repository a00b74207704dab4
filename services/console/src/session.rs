//! Sessions: a random token in a cookie (`Secure`, `HttpOnly`, `SameSite=Strict`, path `/`),
//! its SHA-256 in `operator_sessions` with the operator and a CSRF token of its own. A session
//! ends after `session_idle` without a request or `session_max` after its login, at logout,
//! and when its operator is disabled. Pages take a [`Session`] (a request without one is sent
//! to the login form); actions also check the form's CSRF token ([`Session::check_csrf`]) and
//! the operator's role ([`Session::require_admin`]).

use crate::operators::Role;
use crate::state::Console;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::Duration;

/// The header the console's script sends with a page's automatic refresh.
pub const REFRESH_HEADER: &str = "x-console-refresh";

/// The session cookie's name.
pub const COOKIE: &str = "sagapay_console";

/// A logged-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: String,
    pub role: Role,
    pub csrf_token: String,
}

/// A random token: 32 bytes, URL-safe base64.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The value of cookie `name` in `headers`, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value: `Secure`, `HttpOnly`, `SameSite=Strict`, for the whole console.
/// `max_age` zero removes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        max_age.as_secs()
    )
}

/// Opens a session for `operator`; returns the token for the cookie.
pub async fn open(pool: &PgPool, operator: &str, max: Duration) -> anyhow::Result<String> {
    // Sessions past their lifetime are deleted here, at a login, not on every request.
    sqlx::query("DELETE FROM operator_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let token = random_token()?;
    sqlx::query(
        "INSERT INTO operator_sessions (token_sha256, operator, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(digest(&token))
    .bind(operator)
    .bind(random_token()?)
    .bind(max.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(token)
}

/// Ends the session of `token` (nothing if there is none).
pub async fn close(pool: &PgPool, token: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM operator_sessions WHERE token_sha256 = $1")
        .bind(digest(token))
        .execute(pool)
        .await?;
    Ok(())
}

/// The live session of `token`, its last request moved to now when `touch` (a page's own
/// refresh does not keep a session alive: a forgotten tab still ends). One statement: a
/// session past its idle time or its lifetime is not found.
pub async fn find(
    pool: &PgPool,
    token: &str,
    idle: Duration,
    touch: bool,
) -> anyhow::Result<Option<Session>> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "UPDATE operator_sessions s
            SET last_seen_at = CASE WHEN $3 THEN now() ELSE s.last_seen_at END
           FROM operators o
          WHERE s.token_sha256 = $1 AND o.name = s.operator AND o.disabled_at IS NULL
            AND s.expires_at > now()
            AND s.last_seen_at > now() - make_interval(secs => $2)
         RETURNING s.operator, o.role, s.csrf_token",
    )
    .bind(digest(token))
    .bind(idle.as_secs_f64())
    .bind(touch)
    .fetch_optional(pool)
    .await?;
    row.map(|(operator, role, csrf_token)| {
        Ok(Session {
            operator,
            role: Role::parse(&role)?,
            csrf_token,
        })
    })
    .transpose()
}

/// Why a request is refused: its status, a machine-readable code and a message; answered as
/// a page ([`refusal`]).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refusal(self.status, self.code, &self.message)
    }
}

impl Session {
    /// Refuses a form without this session's CSRF token (403).
    pub fn check_csrf(&self, given: &str) -> Result<(), Refusal> {
        if sagapay_service_kit::constant_time::secret_matches(given, &self.csrf_token) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "csrf_token_invalid",
                "This form's security token is missing or stale: reload the page and try again.",
            ))
        }
    }

    /// Refuses a viewer (403): only admins act.
    pub fn require_admin(&self) -> Result<(), Refusal> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "operator_not_admin",
                "Viewers see; only an admin operator can do this.",
            )),
        }
    }
}

/// Whether `next` may be redirected to after a login: a path of this console, never another
/// site (`//host`, `/\host`, a scheme) and never the login itself.
pub fn safe_next(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.starts_with("/login")
        && !next.starts_with("/logout")
        && next.len() <= 2048
        && next.chars().all(|c| c.is_ascii_graphic())
}

/// A refusal page: the status, a machine-readable code and a message.
pub fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Refused — SagaPay console" }
                link rel="stylesheet" href="/static/console.css"; }
            body { main class="refused" {
                h1 { "Refused" }
                p class="error" data-code=(code) { (message) }
                p { code { (code) } }
                p { a href="/" { "Back to the console" } }
            } }
        }
    };
    (status, page).into_response()
}

impl FromRequestParts<Console> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Console) -> Result<Self, Response> {
        // Back to this page after the login (a page, never a form's target).
        let next = match parts.method {
            axum::http::Method::GET => parts.uri.path_and_query().map(|p| p.as_str()),
            _ => None,
        }
        .filter(|p| safe_next(p))
        .map(|p| format!("next={}", utf8_percent_encode(p, NON_ALPHANUMERIC)));
        let login = |expired: bool| {
            let query: Vec<String> = expired
                .then(|| "expired=1".to_owned())
                .into_iter()
                .chain(next.clone())
                .collect();
            Redirect::to(&format!("/login?{}", query.join("&"))).into_response()
        };
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(login(false));
        };
        // The page's script marks its refreshes (`static/console.js`).
        let touch = !parts.headers.contains_key(REFRESH_HEADER);
        match find(&state.pool, &token, state.session_idle, touch).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(login(true)),
            Err(e) => {
                tracing::warn!(error = %e, "reading a session");
                Err(refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "console_database_unavailable",
                    "The console's database does not answer; try again in a moment.",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; sagapay_console=tok; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn the_cookie_is_secure_http_only_and_strict() {
        let c = set_cookie(COOKIE, "t", Duration::from_secs(60));
        for part in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
    }

    #[test]
    fn only_the_consoles_own_pages_are_gone_back_to() {
        assert!(safe_next("/payments/abc?x=1"));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/login",
            "/logout",
            "/a b",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_long_and_random() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
