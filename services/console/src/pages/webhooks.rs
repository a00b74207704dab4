//! Webhooks: deliveries by merchant and status, their last attempt, and resend (the delivery
//! is sent again now with the same event id: `sagapay_notification::ops`, as
//! `sagapayctl webhooks resend`).

use super::{Act, ActionForm};
use crate::layout::{badge, can_act, csrf, page, time};
use crate::session::Session;
use crate::state::Console;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use sagapay_notification::ops;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Default, Deserialize)]
pub struct WebhookQuery {
    #[serde(default)]
    merchant: String,
    #[serde(default)]
    status: String,
}

/// `GET /webhooks`.
pub async fn list(
    State(state): State<Console>,
    session: Session,
    Query(q): Query<WebhookQuery>,
) -> Response {
    let merchant = match q.merchant.trim() {
        "" => None,
        m => match Uuid::parse_str(m) {
            Ok(m) => Some(m),
            Err(_) => {
                return crate::session::refusal(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_merchant",
                    "The merchant filter is a merchant id.",
                )
            }
        },
    };
    let status = Some(q.status.trim().to_ascii_uppercase())
        .filter(|s| ["PENDING", "DELIVERED", "FAILED"].contains(&s.as_str()));
    let filter = ops::Filter {
        endpoint_id: None,
        merchant_id: merchant,
        status,
        limit: 200,
    };
    let rows = match ops::list(&state.dbs.notification, &filter).await {
        Ok(r) => r,
        Err(e) => return super::unavailable(e.into()),
    };
    let body = html! {
        form method="get" action="/webhooks" class="search" {
            input type="text" name="merchant" placeholder="merchant id" value=(q.merchant);
            select name="status" {
                option value="" { "any status" }
                @for s in ["PENDING", "DELIVERED", "FAILED"] { option value=(s) selected[q.status == s] { (s) } }
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p class="empty" { "No delivery matches." } }
        @else { table class="deliveries" {
            thead { tr { th { "Delivery" } th { "Event" } th { "Status" } th { "Tries" } th { "Last answer" } th { "Endpoint" } th { "Created" } th {} } }
            tbody { @for d in &rows { tr data-delivery=(d.delivery_id) {
                td class="id" { (d.delivery_id) }
                td { (d.event_type) br; span class="id" { (d.event_id) } }
                td { (badge(&d.status)) }
                td { (d.attempts) }
                td { (d.last_status_code.map(|c| c.to_string()).unwrap_or_default()) " " (d.last_error.as_deref().unwrap_or("")) }
                td { (d.url) }
                td { (time(d.created_at)) }
                td { @if can_act(&session) {
                    form method="post" action={ "/webhooks/" (d.delivery_id) "/resend" } class="inline action" {
                        (csrf(&session))
                        input type="hidden" name="reason" value="resent from the console";
                        button type="submit" { "Resend" }
                    }
                } }
            } } }
        } }
    };
    page(&session, "/webhooks", "Webhooks", body).into_response()
}

/// `POST /webhooks/{delivery_id}/resend`.
pub async fn resend(
    State(state): State<Console>,
    session: Session,
    Path(delivery_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = form.admit(&session, false) {
        return refused.into_response();
    }
    let Ok(id) = Uuid::parse_str(&delivery_id) else {
        return super::not_found("That is not a delivery id.");
    };
    let result = async {
        match ops::resend(&state.dbs.notification, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(anyhow::anyhow!(
                "no delivery {id} to an endpoint that still exists"
            )),
            Err(e) => Err(e.into()),
        }
    };
    let act = Act {
        state: &state,
        session: &session,
        action: "webhook.resend",
        target: &id.to_string(),
        reason: form.reason.trim(),
        back: "/webhooks",
    };
    act.run(
        result,
        |_| "sent again".to_owned(),
        |()| format!("Delivery {id} will be sent again now."),
    )
    .await
}
