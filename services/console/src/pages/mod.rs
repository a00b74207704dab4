//! The console's pages, one module each, and what their actions share: every action is a
//! POST of a form with the session's CSRF token, taken by an admin, with a reason where the
//! operation asks one, run through `sagapay-operations`, recorded ([`crate::audit`]), and
//! answered with a page that says what happened (or why it was refused, with a code).

mod actions;
mod attention;
mod dead_letters;
mod health;
mod merchants;
mod payments;
mod reconciliation;
mod reviews;
mod webhooks;

use crate::session::{refusal, Refusal, Session};
use crate::state::Console;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;

/// The pages' routes (logging in and out are [`crate::login`]'s).
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/payments") }))
        .route("/payments", get(payments::search))
        .route("/payments/{payment_id}", get(payments::detail))
        .route("/attention", get(attention::list))
        .route("/attention/{payment_id}/{verb}", post(attention::act))
        .route("/reviews", get(reviews::list))
        .route("/reviews/{payment_id}/{verb}", post(reviews::decide))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/replay", post(dead_letters::replay))
        .route("/webhooks", get(webhooks::list))
        .route("/webhooks/{delivery_id}/resend", post(webhooks::resend))
        .route("/system", get(health::page_route))
        .route("/system/live", get(health::live))
        .route("/reconciliation", get(reconciliation::page_route))
        .route("/merchants", get(merchants::list))
        .route("/merchants/{merchant_id}/keys", post(merchants::create_key))
        .route("/merchants/{merchant_id}/limit", post(merchants::set_limit))
        .route("/keys/{key_id}/revoke", post(merchants::revoke_key))
        .route("/actions", get(actions::list))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../static/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/console.js"),
    )
        .into_response()
}

/// What an action's form carries besides its own fields.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf_token: String,
    #[serde(default)]
    pub reason: String,
}

impl ActionForm {
    /// Checks the form before anything runs: its CSRF token, an admin, and a reason of 1 to
    /// 500 characters when `needs_reason`.
    pub fn admit(&self, session: &Session, needs_reason: bool) -> Result<(), Refusal> {
        session.check_csrf(&self.csrf_token)?;
        session.require_admin()?;
        let reason = self.reason.trim();
        if needs_reason && (reason.is_empty() || reason.chars().count() > 500) {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reason_required",
                "Say why (1 to 500 characters): the reason is recorded with your name.",
            ));
        }
        Ok(())
    }
}

/// An action about to run: who (the session's operator), what, on what, why, and the page to
/// go back to.
pub struct Act<'a> {
    pub state: &'a Console,
    pub session: &'a Session,
    pub action: &'a str,
    pub target: &'a str,
    pub reason: &'a str,
    pub back: &'a str,
}

impl Act<'_> {
    /// Records the action, runs `operation`, records how it ended (`record`), and answers
    /// with what it did (`say`) or why it was refused ([`crate::audit::record`]).
    pub async fn run<T>(
        self,
        operation: impl std::future::Future<Output = anyhow::Result<T>>,
        record: impl FnOnce(&T) -> String,
        say: impl FnOnce(T) -> String,
    ) -> Response {
        let recorded = crate::audit::record(
            &self.state.pool,
            &self.session.operator,
            self.action,
            self.target,
            self.reason,
            operation,
            record,
        )
        .await;
        outcome(self.session, self.back, recorded.map(say))
    }
}

/// The page after an action: what it did, or why it was refused, and the way back.
pub fn outcome(session: &Session, back: &str, result: anyhow::Result<String>) -> Response {
    match result {
        Ok(done) => crate::layout::page(
            session,
            back,
            "Done",
            html! {
                p class="done" data-code="done" { (done) }
                p { a href=(back) { "Back" } }
            },
        )
        .into_response(),
        Err(e) => {
            let (status, code) = failure(&e);
            let body = html! {
                p class="error" data-code=(code) { (format!("{e:#}")) }
                p { a href=(back) { "Back" } }
            };
            (status, crate::layout::page(session, back, "Refused", body)).into_response()
        }
    }
}

/// Why an operation failed, as a status and a code: a service or database that did not
/// answer (503, try again), or the operation's refusal (409, with the route's reason).
fn failure(e: &anyhow::Error) -> (StatusCode, &'static str) {
    if e.chain().any(|c| c.is::<reqwest::Error>()) {
        (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
    } else if e.chain().any(|c| c.is::<sqlx::Error>()) {
        (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
    } else {
        (StatusCode::CONFLICT, "operation_refused")
    }
}

/// A page for something that does not exist (a payment id that is not one, say).
pub fn not_found(what: &str) -> Response {
    refusal(StatusCode::NOT_FOUND, "not_found", what)
}

/// A page for a read that failed (a database or a service that does not answer).
pub fn unavailable(e: anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "console read failed");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "read_failed",
        &format!("Could not read what this page shows: {e:#}"),
    )
}
