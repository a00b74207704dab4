//! Merchants: each with its API keys (create: the secret is shown once, on the answer page;
//! revoke), its share of admission control (its payments in flight and parked, its own limit
//! or the default, set through the orchestrator's ops route), and its webhook endpoints.
//! Keys are the gateway's (`sagapay_gateway::keys`, as `sagapayctl key`).

use super::{Act, ActionForm};
use crate::layout::{can_act, csrf, page, time};
use crate::reads::{self, Admission, Endpoint};
use crate::session::{Refusal, Session};
use crate::state::Console;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use sagapay_gateway::keys::{self, KeyRecord, MerchantRecord};
use serde::Deserialize;
use uuid::Uuid;

/// `GET /merchants`.
pub async fn list(State(state): State<Console>, session: Session) -> Response {
    let merchants = match keys::list_merchants(&state.dbs.gateway).await {
        Ok(m) => m,
        Err(e) => return super::unavailable(e.into()),
    };
    let (admission, endpoints, live) = tokio::join!(
        reads::admission(&state.dbs.orchestrator),
        reads::endpoints(&state.dbs.notification),
        state.ops.admission(),
    );
    // A list that could not be read is not shown as empty.
    let (admission, endpoints, live) = match (admission, endpoints, live) {
        (Ok(a), Ok(e), Ok(l)) => (a, e, l),
        (Err(e), _, _) | (_, Err(e), _) => return super::unavailable(e.into()),
        (_, _, Err(e)) => return super::unavailable(e),
    };
    let in_flight = |id: Uuid| {
        live["merchants"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["merchant_id"] == id.to_string()))
            .and_then(|m| m["in_flight"].as_i64())
            .unwrap_or(0)
    };
    let mut cards = Vec::new();
    for m in &merchants {
        let keys = match keys::list_keys(&state.dbs.gateway, m.merchant_id).await {
            Ok(k) => k,
            Err(e) => return super::unavailable(e.into()),
        };
        let share = admission.iter().find(|a| a.merchant_id == m.merchant_id);
        let hooks: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.merchant_id == m.merchant_id)
            .collect();
        cards.push(card(
            &session,
            m,
            &keys,
            (in_flight(m.merchant_id), share),
            &hooks,
        ));
    }
    let body = html! {
        @if merchants.is_empty() { p class="empty" { "No merchant yet (sagapayctl merchant create NAME)." } }
        @for c in cards { (c) }
    };
    page(&session, "/merchants", "Merchants", body).into_response()
}

fn card(
    session: &Session,
    m: &MerchantRecord,
    keys: &[KeyRecord],
    (in_flight, share): (i64, Option<&Admission>),
    hooks: &[&Endpoint],
) -> Markup {
    let act = can_act(session);
    html! {
        article class="card merchant" data-merchant=(m.merchant_id) {
            header { strong { (m.name) } " " span class="id" { (m.merchant_id) } " · since " (time(m.created_at)) }
            p class="meta" {
                "In flight: " (in_flight) " · parked for an operator: " (share.map_or(0, |s| s.parked))
                " · own limit: " (share.and_then(|s| s.max_in_flight).map(|n| if n == 0 { "none".to_owned() } else { n.to_string() }).unwrap_or_else(|| "the default share".into()))
                " · " a href={ "/payments?merchant=" (m.merchant_id) } { "payments" }
                " · " a href={ "/webhooks?merchant=" (m.merchant_id) } { "deliveries" }
            }
            @if act { (limit_form(session, m.merchant_id)) }
            h3 { "API keys" }
            table { tbody { @for k in keys { tr class=[k.revoked_at.is_some().then_some("revoked")] {
                td { code { (k.key_prefix) "…" } } td class="id" { (k.key_id) } td { (time(k.created_at)) }
                td { @match k.revoked_at {
                    Some(t) => { "revoked " (time(t)) },
                    None => @if act { form method="post" action={ "/keys/" (k.key_id) "/revoke" } class="inline action" {
                        (csrf(session))
                        input type="text" name="reason" placeholder="why (recorded)" required maxlength="500";
                        button type="submit" class="danger" { "Revoke" }
                    } },
                } }
            } } } }
            @if act { form method="post" action={ "/merchants/" (m.merchant_id) "/keys" } class="inline action" {
                (csrf(session))
                input type="hidden" name="reason" value="key created in the console";
                button type="submit" { "Create a key" }
            } }
            h3 { "Webhook endpoints" }
            @if hooks.is_empty() { p class="empty" { "None." } }
            ul { @for e in hooks { li {
                code { (e.url) } " · " (e.enabled_events.join(", "))
                @if e.disabled { " · " span class="badge bad" { "disabled" } }
            } } }
        }
    }
}

fn limit_form(session: &Session, merchant: Uuid) -> Markup {
    html! {
        form method="post" action={ "/merchants/" (merchant) "/limit" } class="inline action" {
            (csrf(session))
            input type="number" name="max_in_flight" min="0" max="1000000" placeholder="default";
            input type="text" name="reason" placeholder="why (recorded)" required maxlength="500";
            button type="submit" { "Set its limit" }
        }
    }
}

fn merchant_id(s: &str) -> Result<Uuid, Refusal> {
    Uuid::parse_str(s).map_err(|_| {
        Refusal::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "That is not a merchant id.",
        )
    })
}

/// `POST /merchants/{id}/keys`: a new key, its secret shown once.
pub async fn create_key(
    State(state): State<Console>,
    session: Session,
    Path(merchant): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = form.admit(&session, false) {
        return refused.into_response();
    }
    let id = match merchant_id(&merchant) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let result = async {
        keys::create_key(&state.dbs.gateway, id)
            .await
            .map_err(anyhow::Error::from)
    };
    let act = Act {
        state: &state,
        session: &session,
        action: "key.create",
        target: &id.to_string(),
        reason: form.reason.trim(),
        back: "/merchants",
    };
    act.run(
        result,
        |k| format!("key {} created", k.key_id),
        |k| {
            format!(
                "Key {} of merchant {id}: {} — shown once, copy it now.",
                k.key_id, k.secret
            )
        },
    )
    .await
}

/// `POST /keys/{key_id}/revoke`.
pub async fn revoke_key(
    State(state): State<Console>,
    session: Session,
    Path(key_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = form.admit(&session, true) {
        return refused.into_response();
    }
    let Ok(id) = Uuid::parse_str(&key_id) else {
        return super::not_found("That is not a key id.");
    };
    let result = async {
        keys::revoke_key(&state.dbs.gateway, id)
            .await
            .map_err(anyhow::Error::from)
    };
    let act = Act {
        state: &state,
        session: &session,
        action: "key.revoke",
        target: &id.to_string(),
        reason: form.reason.trim(),
        back: "/merchants",
    };
    act.run(
        result,
        |k| format!("key {}… revoked", k.key_prefix),
        |k| {
            format!(
                "Key {}… revoked: refused from the next request on.",
                k.key_prefix
            )
        },
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct LimitForm {
    #[serde(flatten)]
    action: ActionForm,
    #[serde(default)]
    max_in_flight: String,
}

/// `POST /merchants/{id}/limit`: a number (0: no limit of its own) or empty (the default).
pub async fn set_limit(
    State(state): State<Console>,
    session: Session,
    Path(merchant): Path<String>,
    Form(form): Form<LimitForm>,
) -> Response {
    if let Err(refused) = form.action.admit(&session, true) {
        return refused.into_response();
    }
    let id = match merchant_id(&merchant) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let limit = match form.max_in_flight.trim() {
        "" => None,
        n => match n.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Refusal::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_max_in_flight",
                    "A limit is a whole number of payments (0: none of its own), or empty for the default share.",
                )
                .into_response()
            }
        },
    };
    let result = state.ops.set_merchant_limit(id, limit, &session.operator);
    let act = Act {
        state: &state,
        session: &session,
        action: "merchant.limit",
        target: &id.to_string(),
        reason: form.action.reason.trim(),
        back: "/merchants",
    };
    act.run(
        result,
        |v| v.to_string(),
        |v| format!("Merchant {id}: limit now {}.", v["max_in_flight"]),
    )
    .await
}
