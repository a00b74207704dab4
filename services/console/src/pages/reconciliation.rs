//! Reconciliation: the three-way comparison of the provider's books, the payments and the
//! ledger (`sagapay_operations::reconcile`, as `sagapayctl reconcile`) for a window of
//! creation times, its differences grouped by kind, each linking to its payment.

use super::payments::when;
use crate::layout::{page, time};
use crate::session::Session;
use crate::state::Console;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use sagapay_operations::reconcile::{self, Report, Window};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
pub struct ReconcileQuery {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    settling_s: String,
    #[serde(default)]
    run: String,
}

impl ReconcileQuery {
    /// The window asked for; without a start, the last day (the command line's default is
    /// everything: a page anyone logged in can open should not read years by default).
    fn window(&self) -> Result<Window, String> {
        let settling = match self.settling_s.trim() {
            "" => 60,
            s => s
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= 86_400)
                .ok_or_else(|| format!("{s:?} is not a number of seconds (0 to 86400)"))?,
        };
        Ok(Window {
            since: when(&self.since)?
                .or_else(|| Some(chrono::Utc::now() - chrono::Duration::days(1))),
            until: when(&self.until)?,
            settling: Duration::from_secs(settling),
        })
    }
}

/// `GET /reconciliation`: the form, and with `run=1` the comparison.
async fn page_handler(state: &Console, q: &ReconcileQuery) -> (StatusCode, Markup) {
    let form = html! {
        form method="get" action="/reconciliation" class="search" {
            input type="hidden" name="run" value="1";
            label { "Created from " input type="datetime-local" name="since" value=(q.since) title="default: a day ago"; }
            label { "before " input type="datetime-local" name="until" value=(q.until); }
            label { "leave out the last " input type="number" name="settling_s" min="0" max="86400" value=(q.settling_s) placeholder="60"; " s" }
            button type="submit" { "Reconcile" }
        }
    };
    if q.run != "1" {
        return (StatusCode::OK, form);
    }
    let window = match q.window() {
        Ok(w) => w,
        Err(e) => {
            let body = html! { (form) p class="error" data-code="invalid_window" { (e) } };
            return (StatusCode::UNPROCESSABLE_ENTITY, body);
        }
    };
    let Ok(_running) = state.reconciling.clone().try_acquire_owned() else {
        let body = html! { (form) p class="error" data-code="reconciliation_running" {
        "A reconciliation is running already: try again when it has finished." } };
        return (StatusCode::TOO_MANY_REQUESTS, body);
    };
    match reconcile::run(&state.reconcile_dbs, &window).await {
        Ok(report) => (StatusCode::OK, html! { (form) (result(&report)) }),
        Err(e) => {
            let body =
                html! { (form) p class="error" data-code="read_failed" { (format!("{e:#}")) } };
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

pub async fn page_route(
    State(state): State<Console>,
    session: Session,
    Query(q): Query<ReconcileQuery>,
) -> Response {
    let (status, body) = page_handler(&state, &q).await;
    (
        status,
        page(&session, "/reconciliation", "Reconciliation", body),
    )
        .into_response()
}

fn result(r: &Report) -> Markup {
    let mut by_kind: BTreeMap<&str, Vec<&reconcile::Difference>> = BTreeMap::new();
    for d in &r.differences {
        by_kind.entry(d.kind).or_default().push(d);
    }
    html! {
        p class=(if r.differences.is_empty() { "done" } else { "error" }) data-code="reconciled" {
            (r.differences.len()) " difference(s) · " (r.payments_checked) " payments created before "
            (time(r.until)) " checked, " (r.in_flight) " still moving; "
            (r.provider_operations_checked) " provider operations, " (r.postings_checked)
            " postings, " (r.refunds_checked) " refunds"
        }
        @for (kind, diffs) in &by_kind {
            h2 { code { (kind) } " (" (diffs.len()) ")" }
            table { tbody { @for d in diffs { tr {
                td class="id" { a href={ "/payments/" (d.payment_id) } { (d.payment_id) } }
                td { (d.problem) }
            } } } }
        }
    }
}
