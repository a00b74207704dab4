//! Needs attention: the payments and refunds past their deadline or flagged for an operator
//! (the orchestrator's sweeper's list, `GET /ops/payments/stuck`), each with the actions its
//! kind allows: send its step again, fail it, or keep a capture of another amount. A reason
//! is required and recorded with the operator's name, here and by the orchestrator.

use super::{Act, ActionForm};
use crate::layout::{badge, can_act, csrf, money, page, time};
use crate::reads;
use crate::session::{Refusal, Session};
use crate::state::Console;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

/// `GET /attention`.
pub async fn list(State(state): State<Console>, session: Session) -> Response {
    let stuck = match state.ops.stuck(200).await {
        Ok(s) => s,
        Err(e) => return super::unavailable(e),
    };
    let empty = Vec::new();
    let payments = stuck["payments"].as_array().unwrap_or(&empty);
    let ids: Vec<Uuid> = payments
        .iter()
        .filter_map(|p| p["payment_id"].as_str()?.parse().ok())
        .collect();
    // Without each payment's kind the wrong actions would be offered: no page rather than that.
    let kinds: HashMap<Uuid, reads::PaymentRow> =
        match reads::payments(&state.dbs.orchestrator, &ids).await {
            Ok(rows) => rows.into_iter().map(|p| (p.payment_id, p)).collect(),
            Err(e) => return super::unavailable(e.into()),
        };
    let body = html! {
        @if payments.is_empty() { p class="empty" { "Nothing is stuck." } }
        @for p in payments { (card(&session, p, &kinds)) }
        h2 { "Refunds" }
        (refunds(stuck["refunds"].as_array().unwrap_or(&empty)))
    };
    page(&session, "/attention", "Needs attention", body).into_response()
}

/// What an operator may do with a payment flagged for `kind`.
fn verbs(kind: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match kind {
        Some("AMOUNT_MISMATCH") => &[
            ("accept", "Accept the provider's amount"),
            ("fail", "Fail (refund what was taken)"),
        ],
        Some("VOID_DECLINED") => &[("fail", "Fail")],
        _ => &[("retry", "Send its step again"), ("fail", "Fail")],
    }
}

fn card(session: &Session, p: &Value, rows: &HashMap<Uuid, reads::PaymentRow>) -> Markup {
    let id = p["payment_id"].as_str().unwrap_or("");
    let row = id.parse().ok().and_then(|id: Uuid| rows.get(&id));
    let kind = row.and_then(|r| r.attention_kind.as_deref());
    html! {
        article class="card attention" data-payment=(id) {
            header {
                a class="id" href={ "/payments/" (id) } { (id) }
                (badge(p["status"].as_str().unwrap_or("?")))
                @if let Some(k) = kind { span class="badge warn" { (k) } }
                @if let Some(r) = row { span class="num" { (money(r.amount_minor, &r.currency)) } }
            }
            p { (p["attention_reason"].as_str().unwrap_or("past its deadline")) }
            p class="meta" {
                "unchanged for " (p["age_seconds"]) " s · overdue " (p["overdue_seconds"]) " s · re-sent "
                (p["nudges"]) " time(s)"
                @if let Some(c) = p["compensation"].as_str() { " · undoing: " (c) }
            }
            @if can_act(session) {
                @for (verb, label) in verbs(kind) {
                    form method="post" action={ "/attention/" (id) "/" (verb) } class="action" {
                        (csrf(session))
                        input type="text" name="reason" placeholder="why (recorded)" required maxlength="500";
                        label class="confirm" { input type="checkbox" name="confirm" value="yes" required; " I am sure" }
                        button type="submit" class=(verb) { (label) }
                    }
                }
            }
        }
    }
}

fn refunds(refunds: &[Value]) -> Markup {
    html! {
        @if refunds.is_empty() { p class="empty" { "No refund is stuck." } }
        @else { table { thead { tr { th { "Refund" } th { "Payment" } th { "Status" } th class="num" { "Amount" } th { "Deadline" } th { "Why" } } }
            tbody { @for r in refunds { tr {
                td class="id" { (r["refund_id"].as_str().unwrap_or("")) }
                td class="id" { a href={ "/payments/" (r["payment_id"].as_str().unwrap_or("")) } { (r["payment_id"].as_str().unwrap_or("")) } }
                td { (badge(r["status"].as_str().unwrap_or("?"))) }
                td class="num" { (money(r["amount_minor"].as_i64().unwrap_or(0), r["currency"].as_str().unwrap_or(""))) }
                td { (r["deadline_at"].as_str().and_then(|t| t.parse().ok()).map(time).unwrap_or_default()) }
                td { (r["attention_reason"].as_str().unwrap_or("past its deadline")) }
            } } } } }
    }
}

/// An action on a stuck payment: a reason and an explicit confirmation.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AttentionForm {
    #[serde(flatten)]
    action: ActionForm,
    #[serde(default)]
    confirm: String,
}

/// `POST /attention/{id}/{retry|fail|accept}`.
pub async fn act(
    State(state): State<Console>,
    session: Session,
    Path((payment_id, verb)): Path<(String, String)>,
    Form(form): Form<AttentionForm>,
) -> Response {
    if let Err(refused) = form.action.admit(&session, true) {
        return refused.into_response();
    }
    if form.confirm != "yes" {
        return Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirmation_required",
            "Tick \"I am sure\": this ends or moves a payment.",
        )
        .into_response();
    }
    let Ok(id) = Uuid::parse_str(&payment_id) else {
        return super::not_found("That is not a payment id.");
    };
    let by = session.operator.as_str();
    let reason = form.action.reason.trim();
    if !["retry", "fail", "accept"].contains(&verb.as_str()) {
        return super::not_found("No such action.");
    }
    let result = async {
        match verb.as_str() {
            "retry" => state.ops.retry(id, by).await,
            "fail" => state.ops.fail(id, reason, by).await,
            _ => state.ops.accept(id, reason, by).await,
        }
    };
    let act = Act {
        state: &state,
        session: &session,
        action: &format!("payment.{verb}"),
        target: &id.to_string(),
        reason,
        back: "/attention",
    };
    act.run(
        result,
        |v| format!("{} ({})", v["status"].as_str().unwrap_or("?"), v["sent"]),
        |v| {
            format!(
                "Payment {id}: {verb} done; it is {} now ({} sent).",
                v["status"].as_str().unwrap_or("?"),
                v["sent"]
            )
        },
    )
    .await
}
