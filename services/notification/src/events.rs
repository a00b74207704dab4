//! From the saga's `payments.finalized` to what merchants see: one merchant event per payment
//! outcome (`evt_` + the saga event's id, so a redelivered message names the same event), and
//! one webhook delivery per endpoint of that merchant subscribed to its type, written in one
//! statement inside the inbox transaction. A crash anywhere leaves either all of it or none.

use sagapay_domain::events::PaymentFinalized;
use sagapay_domain::{Envelope, MerchantEventType};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// The public id of the merchant event caused by the saga event `source`.
pub fn event_id(source: Uuid) -> String {
    format!("evt_{}", source.simple())
}

/// The event as every delivery and `GET /events` show it.
pub fn body(env: &Envelope, ev: &PaymentFinalized, kind: MerchantEventType) -> serde_json::Value {
    json!({
        "id": event_id(env.event_id),
        "type": kind,
        "created": env.occurred_at.timestamp(),
        "data": {
            "object": {
                "payment_id": env.payment_id,
                "status": ev.status,
                "amount_cents": ev.amount_minor.get(),
                "currency": ev.currency,
                "customer_id": ev.customer_id,
                "created_at": ev.created_at,
                "reason": ev.reason,
            }
        }
    })
}

/// Records the merchant event for `ev` (if its outcome is one merchants hear about) and its
/// deliveries; nothing when the event was recorded before. Returns the deliveries created.
pub async fn record(
    conn: &mut PgConnection,
    env: &Envelope,
    ev: &PaymentFinalized,
) -> sqlx::Result<u64> {
    let Some(kind) = MerchantEventType::of_final_status(ev.status) else {
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
    .bind(ev.merchant_id)
    .bind(kind.as_str())
    .bind(env.payment_id)
    .bind(body(env, ev, kind))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(deliveries)
}
