//! From the saga's public events (`payments.finalized`, `payments.awaiting_capture`,
//! `refunds.succeeded`) to what merchants see: one merchant event each (`evt_` + the saga
//! event's id, so a redelivered message names the same event), and
//! one webhook delivery per endpoint of that merchant subscribed to its type, written in one
//! statement inside the inbox transaction. A crash anywhere leaves either all of it or none.

use sagapay_api_models::{EventData, MerchantEvent};
use sagapay_domain::events::{
    DecodeError, PaymentAwaitingCapture, PaymentFinalized, RefundFailed, RefundSucceeded,
};
use sagapay_domain::{Envelope, EventType, MerchantEventType, PaymentStatus};
use sagapay_messaging::HandlerError;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// The public id of the merchant event caused by the saga event `source`.
pub fn event_id(source: Uuid) -> String {
    format!("evt_{}", source.simple())
}

/// The event as every delivery and `GET /events` show it.
pub fn body(
    env: &Envelope,
    kind: MerchantEventType,
    object: serde_json::Value,
) -> serde_json::Value {
    let event = MerchantEvent {
        id: event_id(env.event_id),
        event_type: kind,
        created: env.occurred_at.timestamp(),
        data: EventData { object },
    };
    serde_json::to_value(event).expect("a merchant event serializes")
}

/// What `env` tells its merchant, if anything: the merchant, the event's type and its object
/// (the payment, or for refund events the refund).
pub fn merchant_event(
    env: &Envelope,
) -> Result<Option<(Uuid, MerchantEventType, serde_json::Value)>, DecodeError> {
    Ok(match env.event_type() {
        Some(EventType::PaymentFinalized) => {
            let ev: PaymentFinalized = env.decode()?;
            MerchantEventType::of_final_status(ev.status).map(|kind| {
                let object = json!({
                    "payment_id": env.payment_id,
                    "status": ev.status,
                    "amount_cents": ev.amount_minor.get(),
                    "amount_captured_cents": ev.amount_captured_minor.map(|a| a.get()),
                    "currency": ev.currency,
                    "customer_id": ev.customer_id,
                    "created_at": ev.created_at,
                    "reason": ev.reason,
                });
                (ev.merchant_id, kind, object)
            })
        }
        Some(EventType::PaymentAwaitingCapture) => {
            let ev: PaymentAwaitingCapture = env.decode()?;
            let object = json!({
                "payment_id": env.payment_id,
                "status": PaymentStatus::Authorized,
                "capture_method": "manual",
                "amount_cents": ev.amount_minor.get(),
                "amount_captured_cents": null,
                "currency": ev.currency,
                "customer_id": ev.customer_id,
                "created_at": ev.created_at,
            });
            Some((ev.merchant_id, MerchantEventType::PaymentAuthorized, object))
        }
        Some(EventType::RefundSucceeded) => {
            let ev: RefundSucceeded = env.decode()?;
            let object = json!({
                "refund_id": ev.refund_id,
                "payment_id": env.payment_id,
                "status": "SUCCEEDED",
                "amount_cents": ev.amount_minor.get(),
                "currency": ev.currency,
                "reason": ev.reason,
                "payment_status": ev.payment_status,
            });
            Some((ev.merchant_id, MerchantEventType::RefundSucceeded, object))
        }
        Some(EventType::RefundFailed) => {
            let ev: RefundFailed = env.decode()?;
            let object = json!({
                "refund_id": ev.refund_id,
                "payment_id": env.payment_id,
                "status": "FAILED",
                "amount_cents": ev.amount_minor.get(),
                "currency": ev.currency,
                "reason": ev.reason,
                "failure_code": ev.decline_code,
                "payment_status": ev.payment_status,
            });
            Some((ev.merchant_id, MerchantEventType::RefundFailed, object))
        }
        _ => None,
    })
}

/// Records the merchant event `env` makes (if any) and its deliveries; nothing when the
/// event was recorded before. Returns the deliveries created.
pub async fn record(conn: &mut PgConnection, env: &Envelope) -> Result<u64, HandlerError> {
    let Some((merchant_id, kind, object)) = merchant_event(env)? else {
        return Ok(0);
    };
    let deliveries = sqlx::query(
        "WITH ev AS (
             INSERT INTO merchant_events (event_id, merchant_id, event_type, payment_id, body)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id, merchant_id, event_type)
         INSERT INTO webhook_deliveries (delivery_id, event_id, endpoint_id)
         SELECT gen_random_uuid(), ev.event_id, e.endpoint_id
           FROM ev JOIN webhook_endpoints e
             ON e.merchant_id = ev.merchant_id AND ev.event_type = ANY (e.enabled_events)
            AND e.deleted_at IS NULL AND e.disabled_at IS NULL",
    )
    .bind(event_id(env.event_id))
    .bind(merchant_id)
    .bind(kind.as_str())
    .bind(env.payment_id)
    .bind(body(env, kind, object))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(deliveries)
}
