//! Logging in and out. The login form carries a CSRF token that must match a short-lived
//! cookie set with the form (a page of another site cannot post a login in the operator's
//! browser); logins are limited per name and per client address, and the answer to a wrong
//! name and to a wrong password is the same.

use crate::operators;
use crate::session::{self, cookie, set_cookie, Session};
use crate::state::Console;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The login form's CSRF cookie.
const LOGIN_COOKIE: &str = "sagapay_console_login";
const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf_token: String,
    /// The page to go back to (checked by `session::safe_next`).
    #[serde(default)]
    next: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    expired: String,
    /// The page to go back to after the login.
    #[serde(default)]
    next: String,
}

/// `GET /login`: the form, with a fresh CSRF token in it and in its cookie.
pub async fn form(Query(q): Query<LoginQuery>) -> Response {
    render_form(StatusCode::OK, None, q.expired == "1", &q.next)
}

fn render_form(
    status: StatusCode,
    error: Option<(&str, &str)>,
    expired: bool,
    next: &str,
) -> Response {
    let Ok(token) = session::random_token() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let next = Some(next).filter(|n| session::safe_next(n));
    let page = crate::layout::login_page(&token, error, expired, next);
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, &token, LOGIN_FORM_LIFETIME),
        )],
        page,
    )
        .into_response()
}

/// `POST /login`: a session for the right name and password.
pub async fn login(
    State(state): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty()
        || !sagapay_service_kit::constant_time::secret_matches(&form.csrf_token, &expected)
    {
        return session::refusal(
            StatusCode::FORBIDDEN,
            "csrf_token_invalid",
            "This login form's security token is missing or stale: open the login page again.",
        );
    }
    let client = crate::limits::client_address(
        peer.ip(),
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        state.behind_tls_proxy,
    );
    if !state.login_limits.allow(&form.username, client) {
        let mut resp = render_form(
            StatusCode::TOO_MANY_REQUESTS,
            Some((
                "too_many_logins",
                "Too many attempts: wait a minute and try again.",
            )),
            false,
            &form.next,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return resp;
    }
    match operators::verify(&state.pool, &form.username, &form.password).await {
        Ok(Some(_role)) => {
            tracing::info!(operator = %form.username, address = %client, "console login");
            let address = client.to_string();
            let opened = crate::audit::record(
                &state.pool,
                &form.username,
                "login",
                &address,
                "",
                async { Ok(()) },
                |()| "session opened".to_owned(),
            )
            .await;
            match opened {
                Ok(()) => open_session(&state, &form.username, &form.next).await,
                Err(e) => {
                    tracing::warn!(error = %e, "recording a console login");
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }
        Ok(None) => {
            // The name only if it can be one (a password typed in the wrong field is not logged).
            let name = Some(form.username.as_str()).filter(|n| operators::valid_name(n));
            tracing::info!(operator = name.unwrap_or("(not a name)"), address = %client,
                "console login refused");
            render_form(
                StatusCode::UNAUTHORIZED,
                Some(("invalid_credentials", "Wrong name or password.")),
                false,
                &form.next,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "console login failed");
            session::refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "console_database_unavailable",
                "The console's database does not answer; try again in a moment.",
            )
        }
    }
}

async fn open_session(state: &Console, operator: &str, next: &str) -> Response {
    match session::open(&state.pool, operator, state.session_max).await {
        Ok(token) => {
            let to = if session::safe_next(next) { next } else { "/" };
            let mut resp = Redirect::to(to).into_response();
            let h = resp.headers_mut();
            for c in [
                set_cookie(session::COOKIE, &token, state.session_max),
                set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
            ] {
                if let Ok(v) = header::HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "opening a console session");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /logout`: the session ends.
pub async fn logout(
    State(state): State<Console>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check_csrf(&form.csrf_token) {
        return refused.into_response();
    }
    if let Some(token) = cookie(&headers, session::COOKIE) {
        if let Err(e) = session::close(&state.pool, &token).await {
            tracing::warn!(error = %e, "closing a console session");
        }
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie(session::COOKIE, "", Duration::ZERO),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}
