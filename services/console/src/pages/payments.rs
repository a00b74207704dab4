//! Payments: a search (by id, merchant, customer, status, creation time) and a payment's page:
//! its timeline as a vertical track, its refunds, its provider calls and ledger postings side
//! by side, its webhook deliveries, and what operators did to it.

use crate::layout::{badge, money, page, time};
use crate::reads::{self, PaymentDetail, PaymentFilter, PaymentRow};
use crate::session::Session;
use crate::state::Console;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

const STATUSES: [&str; 11] = [
    "CREATED",
    "RISK_REVIEW",
    "APPROVED",
    "AUTHORIZED",
    "CAPTURED",
    "SETTLED",
    "FAILED",
    "REVERSED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
    "CANCELED",
];

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    merchant: String,
    #[serde(default)]
    customer: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A time typed in a form (`2026-12-07T10:00`, seconds optional, UTC) or RFC 3339.
pub(super) fn when(s: &str) -> Result<Option<DateTime<Utc>>, String> {
    let Some(s) = non_empty(s) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .map(Some)
        .map_err(|_| format!("{s:?} is not a time (2026-12-07T10:00, UTC)"))
}

fn uuid(s: &str, what: &str) -> Result<Option<Uuid>, String> {
    non_empty(s)
        .map(|s| Uuid::parse_str(&s).map_err(|_| format!("{what} {s:?} is not an id")))
        .transpose()
}

impl SearchQuery {
    fn filter(&self) -> Result<PaymentFilter, String> {
        let status = non_empty(&self.status).map(|s| s.to_ascii_uppercase());
        if let Some(s) = &status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(format!("{s:?} is not a payment status"));
            }
        }
        Ok(PaymentFilter {
            payment_id: uuid(&self.q, "payment")?,
            merchant_id: uuid(&self.merchant, "merchant")?,
            customer_id: non_empty(&self.customer),
            status,
            since: when(&self.since)?,
            until: when(&self.until)?,
        })
    }
}

/// `GET /payments`: the search and its results, newest first.
pub async fn search(
    State(state): State<Console>,
    session: Session,
    Query(q): Query<SearchQuery>,
) -> Response {
    let results = match q.filter() {
        Ok(f) => reads::search(&state.dbs.orchestrator, &f)
            .await
            .map_err(|e| format!("reading payments: {e}")),
        Err(e) => Err(e),
    };
    let body = html! {
        (search_form(&q))
        @match &results {
            Ok(rows) if rows.is_empty() => p class="empty" { "No payment matches." },
            Ok(rows) => (payment_table(rows)),
            Err(e) => p class="error" data-code="invalid_search" { (e) },
        }
    };
    let status = if results.is_err() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    (status, page(&session, "/payments", "Payments", body)).into_response()
}

fn search_form(q: &SearchQuery) -> Markup {
    html! {
        form method="get" action="/payments" class="search" {
            input type="search" name="q" placeholder="payment id" value=(q.q);
            input type="text" name="merchant" placeholder="merchant id" value=(q.merchant);
            input type="text" name="customer" placeholder="customer" value=(q.customer);
            select name="status" {
                option value="" { "any status" }
                @for s in STATUSES { option value=(s) selected[q.status == s] { (s) } }
            }
            input type="datetime-local" name="since" value=(q.since) title="created from (UTC)";
            input type="datetime-local" name="until" value=(q.until) title="created before (UTC)";
            button type="submit" { "Search" }
        }
    }
}

/// A table of payments, each linking to its page.
pub fn payment_table(rows: &[PaymentRow]) -> Markup {
    html! {
        table class="payments" {
            thead { tr { th { "Payment" } th { "Status" } th class="num" { "Amount" }
                th { "Merchant" } th { "Customer" } th { "Created" } th { "Why" } } }
            tbody {
                @for p in rows {
                    tr {
                        td { a class="id" href={ "/payments/" (p.payment_id) } { (p.payment_id) } }
                        td { (badge(&p.status)) }
                        td class="num" { (money(p.amount_minor, &p.currency)) }
                        td class="id" { (p.merchant_id) }
                        td { (p.customer_id) }
                        td { (time(p.created_at)) }
                        td { (p.attention_reason.as_deref().or(p.failure_reason.as_deref()).unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// `GET /payments/{id}`: everything about one payment.
pub async fn detail(
    State(state): State<Console>,
    session: Session,
    Path(payment_id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&payment_id) else {
        return super::not_found("That is not a payment id.");
    };
    let target = id.to_string();
    let (detail, actions) = tokio::join!(
        reads::payment_detail(&state.dbs, id),
        crate::audit::recent(&state.pool, Some(&target), 50),
    );
    let d = match detail {
        Ok(Some(d)) => d,
        Ok(None) => return super::not_found("No payment has that id."),
        Err(e) => return super::unavailable(e),
    };
    let body = html! {
        (summary(&d))
        div class="columns" {
            section class="track" { h2 { "Timeline" } (timeline(&d)) }
            section {
                h2 { "Provider" } (attempts(&d))
                h2 { "Ledger" } (postings(&d))
            }
        }
        h2 { "Refunds" } (refunds(&d))
        h2 { "Webhook deliveries" } (deliveries(&d))
        h2 { "Operators' actions" } (super::actions::table(&actions.unwrap_or_default()))
    };
    page(&session, "/payments", &format!("Payment {id}"), body).into_response()
}

fn summary(d: &PaymentDetail) -> Markup {
    let p = &d.payment;
    html! {
        dl class="summary" {
            dt { "Status" } dd id="payment-status" { (badge(&p.status)) }
            dt { "Amount" } dd { (money(p.amount_minor, &p.currency)) }
            dt { "Merchant" } dd class="id" { (p.merchant_id) }
            dt { "Customer" } dd { (p.customer_id) }
            dt { "Method" } dd { (p.payment_method) " · capture " (p.capture_method.to_lowercase()) }
            dt { "Created" } dd { (time(p.created_at)) }
            @if let Some(r) = &p.attention_reason { dt { "Needs attention" } dd class="warn" { (r) } }
            @if let Some(r) = &p.failure_reason { dt { "Failure" } dd { (r) } }
        }
    }
}

/// Who did a step: the service whose event it was, or the operator named in its reason.
fn actor(step: &reads::Step) -> &'static str {
    let r = step.reason.to_ascii_lowercase();
    let by_operator = ["failed by ", "accepted by ", "retried by "]
        .iter()
        .any(|p| r.starts_with(p));
    if by_operator || r.contains("operator") {
        return "operator";
    }
    match step.to_state.as_str() {
        "CREATED" => "gateway",
        "APPROVED" | "RISK_REVIEW" => "risk",
        "AUTHORIZED" | "CAPTURED" | "REVERSED" | "CANCELED" => "provider",
        "SETTLED" | "REFUNDED" | "PARTIALLY_REFUNDED" => "ledger",
        _ => "orchestrator",
    }
}

fn timeline(d: &PaymentDetail) -> Markup {
    html! {
        ol class="timeline" {
            @for s in &d.timeline {
                li class={ "step " (s.kind.to_lowercase()) } {
                    span class="dot" {}
                    div {
                        strong { (s.to_state) }
                        @if s.kind == "STEP" { " (step)" }
                        span class="when" { (time(s.occurred_at)) }
                        span class="actor" { (actor(s)) }
                        p { (s.reason) }
                    }
                }
            }
        }
    }
}

fn attempts(d: &PaymentDetail) -> Markup {
    html! {
        @if d.attempts.is_empty() { p class="empty" { "No call to the provider." } }
        @else { table { thead { tr { th { "Operation" } th { "#" } th { "Outcome" } th { "Reference" } th class="num" { "ms" } th { "At" } } }
            tbody { @for a in &d.attempts { tr {
                td { (a.operation) } td { (a.attempt_no) } td { (badge(&a.outcome)) " " (a.decline_code.as_deref().or(a.error.as_deref()).unwrap_or("")) }
                td class="id" { (a.provider_reference.as_deref().unwrap_or("")) } td class="num" { (a.latency_ms) } td { (time(a.started_at)) }
            } } } } }
    }
}

fn postings(d: &PaymentDetail) -> Markup {
    html! {
        @if d.postings.is_empty() { p class="empty" { "Nothing posted." } }
        @else { table { thead { tr { th { "Posting" } th { "Account" } th class="num" { "Debit" } th class="num" { "Credit" } } }
            tbody { @for l in &d.postings { tr {
                td { (l.posting_kind) } td { (l.account_id) }
                td class="num" { @if l.direction == "DEBIT" { (money(l.amount_minor, &l.currency)) } }
                td class="num" { @if l.direction == "CREDIT" { (money(l.amount_minor, &l.currency)) } }
            } } } } }
    }
}

fn refunds(d: &PaymentDetail) -> Markup {
    html! {
        @if d.refunds.is_empty() { p class="empty" { "No refund." } }
        @else { table { thead { tr { th { "Refund" } th { "Status" } th class="num" { "Amount" } th { "Reason" } th { "Created" } } }
            tbody { @for r in &d.refunds { tr {
                td class="id" { (r.refund_id) } td { (badge(&r.status)) " " (r.failure_reason.as_deref().unwrap_or("")) }
                td class="num" { (money(r.amount_minor, &r.currency)) } td { (r.reason) } td { (time(r.created_at)) }
            } } } } }
    }
}

fn deliveries(d: &PaymentDetail) -> Markup {
    html! {
        @if d.deliveries.is_empty() { p class="empty" { "No webhook delivery." } }
        @else { table { thead { tr { th { "Delivery" } th { "Event" } th { "Status" } th { "Tries" } th { "Endpoint" } } }
            tbody { @for w in &d.deliveries { tr {
                td class="id" { a href={ "/webhooks?merchant=" (d.payment.merchant_id) } { (w.delivery_id) } }
                td { (w.event_type) } td { (badge(&w.status)) " " (w.last_status_code.map(|c| c.to_string()).unwrap_or_default()) }
                td { (w.attempts) } td { (w.url) }
            } } } } }
    }
}
