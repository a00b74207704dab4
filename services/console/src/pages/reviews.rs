//! Reviews: the payments risk's rules sent to a person (`GET /ops/reviews` of risk), oldest
//! first, each approved (the saga resumes) or denied (the payment fails) by the operator,
//! whose name risk records with the decision.

use super::{Act, ActionForm};
use crate::layout::{can_act, csrf, money, page, time};
use crate::session::Session;
use crate::state::Console;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use sagapay_operations::reviews::Decision;
use uuid::Uuid;

/// `GET /reviews`.
pub async fn list(State(state): State<Console>, session: Session) -> Response {
    let page_of = match state.reviews.pending(100).await {
        Ok(p) => p,
        Err(e) => return super::unavailable(e),
    };
    let empty = Vec::new();
    let reviews = page_of["reviews"].as_array().unwrap_or(&empty);
    let body = html! {
        @if reviews.is_empty() { p class="empty" { "No payment waits for a review." } }
        @else { table class="reviews" {
            thead { tr { th { "Payment" } th class="num" { "Amount" } th { "Customer" } th { "Why" } th { "Waiting since" } th {} } }
            tbody { @for r in reviews {
                @let id = r["payment_id"].as_str().unwrap_or("");
                tr data-payment=(id) {
                    td class="id" { a href={ "/payments/" (id) } { (id) } }
                    td class="num" { (money(r["amount_cents"].as_i64().unwrap_or(0), r["currency"].as_str().unwrap_or(""))) }
                    td { (r["customer_id"].as_str().unwrap_or("")) }
                    td { (r["reason"].as_str().unwrap_or("")) }
                    td { (r["created_at"].as_str().and_then(|t| t.parse().ok()).map(time).unwrap_or_default()) }
                    td { @if can_act(&session) {
                        @for (verb, label) in [("approve", "Approve"), ("deny", "Deny")] {
                            form method="post" action={ "/reviews/" (id) "/" (verb) } class="inline action" {
                                (csrf(&session))
                                input type="text" name="reason" placeholder="why (recorded)" maxlength="500";
                                button type="submit" class=(verb) { (label) }
                            }
                        }
                    } }
                }
            } }
        } }
    };
    page(&session, "/reviews", "Reviews", body).into_response()
}

/// `POST /reviews/{id}/{approve|deny}`.
pub async fn decide(
    State(state): State<Console>,
    session: Session,
    Path((payment_id, verb)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = form.admit(&session, false) {
        return refused.into_response();
    }
    let Ok(id) = Uuid::parse_str(&payment_id) else {
        return super::not_found("That is not a payment id.");
    };
    let decision = match verb.as_str() {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        _ => return super::not_found("No such decision."),
    };
    let by = session.operator.as_str();
    let result = state.reviews.decide(id, decision, by);
    let act = Act {
        state: &state,
        session: &session,
        action: &format!("review.{verb}"),
        target: &id.to_string(),
        reason: form.reason.trim(),
        back: "/reviews",
    };
    act.run(
        result,
        |v| v.to_string(),
        |_| format!("Payment {id}: review {verb}d by {by}."),
    )
    .await
}
