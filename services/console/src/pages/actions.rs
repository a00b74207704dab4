//! Actions: what operators did through the console, newest first (`operator_actions`).

use crate::audit::{self, Action};
use crate::layout::{page, time};
use crate::session::Session;
use crate::state::Console;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

/// `GET /actions`: the last 200.
pub async fn list(State(state): State<Console>, session: Session) -> Response {
    match audit::recent(&state.pool, None, 200).await {
        Ok(actions) => page(&session, "/actions", "Actions", table(&actions)).into_response(),
        Err(e) => super::unavailable(e),
    }
}

/// A table of recorded actions.
pub fn table(actions: &[Action]) -> Markup {
    html! {
        @if actions.is_empty() { p class="empty" { "No action recorded." } }
        @else { table class="actions" {
            thead { tr { th { "When" } th { "Operator" } th { "Action" } th { "On" } th { "Why" } th { "Outcome" } } }
            tbody { @for a in actions { tr class=[(!a.succeeded).then_some("refused")] {
                td { (time(a.at)) } td { (a.operator) } td { (a.action) } td class="id" { (a.target) }
                td { (a.reason) } td { (a.outcome) }
            } } }
        } }
    }
}
