//! The saga's staged transitions (`store::StagedMoves`), written for a consumer's batch in one
//! statement: every payment moves with its own compare-and-set, timeline row and outbox row;
//! a payment changed behind the batch's back fails the write, naming it; an illegal
//! transition is refused when it is staged. On payments of a real stack, in transactions
//! rolled back, so the running saga never sees them.

use sagapay_domain::PaymentStatus;
use sagapay_e2e::TestStack;
use sagapay_orchestrator::store::staged::StagedMoves;
use sagapay_orchestrator::store::{self, Transition, TransitionFailure};
use serde_json::json;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// A manual-capture payment, waiting at AUTHORIZED for the merchant.
async fn authorized(stack: &TestStack, name: &str) -> Uuid {
    let pid = stack
        .create_payment_id(
            json!({"customer_id": format!("cust-{name}"), "amount_cents": 900,
            "currency": "USD", "idempotency_key": name, "capture_method": "manual"}),
        )
        .await;
    stack
        .wait_for_status(&pid, "AUTHORIZED", Duration::from_secs(40))
        .await;
    Uuid::parse_str(&pid).unwrap()
}

fn captured(reason: &str) -> Transition<'_> {
    Transition {
        to: PaymentStatus::Captured,
        reason,
        event_id: Some(Uuid::now_v7()),
        facts: store::Facts {
            capture_id: Some("cap_staged"),
            ..store::Facts::default()
        },
        deadline: Some(Duration::from_secs(60)),
        then: None,
    }
}

async fn row(conn: &mut PgConnection, id: Uuid) -> store::PaymentRow {
    store::load_for_update(conn, id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batchs_transitions_are_written_together_or_refused_together() {
    let stack = TestStack::spawn().await;
    let (a, b) = (
        authorized(&stack, "staged-a").await,
        authorized(&stack, "staged-b").await,
    );
    let pool = stack.db("orchestrator").await;

    // Both staged, one statement: both moved, each with a timeline row and the fact.
    let mut tx = pool.begin().await.unwrap();
    let mut staged = StagedMoves::default();
    for id in [a, b] {
        let r = row(&mut tx, id).await;
        staged.stage(&r, &captured("staged together")).unwrap();
    }
    assert!(staged.holds(a) && staged.holds(b));
    staged.write(&mut tx).await.unwrap();
    assert!(staged.is_empty(), "written once, then forgotten");
    for id in [a, b] {
        let r = row(&mut tx, id).await;
        assert_eq!(r.status, PaymentStatus::Captured, "{id}");
        let timeline: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payment_timeline
              WHERE payment_id = $1 AND from_state = 'AUTHORIZED' AND to_state = 'CAPTURED'
                AND reason = 'staged together'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(timeline, 1, "{id}");
    }
    tx.rollback().await.unwrap();

    // A payment changed since it was read: the write fails and names it.
    let mut tx = pool.begin().await.unwrap();
    let mut staged = StagedMoves::default();
    let stale = row(&mut tx, a).await;
    staged.stage(&stale, &captured("stale")).unwrap();
    staged
        .stage(&row(&mut tx, b).await, &captured("fresh"))
        .unwrap();
    sqlx::query("UPDATE payments SET state_version = state_version + 1 WHERE payment_id = $1")
        .bind(a)
        .execute(&mut *tx)
        .await
        .unwrap();
    match staged.write(&mut tx).await {
        Err(TransitionFailure::Conflict(id)) => assert_eq!(id, a),
        other => panic!("expected a conflict on {a}, got {other:?}"),
    }
    tx.rollback().await.unwrap();

    // A transition the table forbids is refused when staged, and nothing is staged.
    let mut tx = pool.begin().await.unwrap();
    let mut staged = StagedMoves::default();
    let r = row(&mut tx, a).await;
    let backwards = Transition {
        to: PaymentStatus::Created,
        ..captured("backwards")
    };
    assert!(matches!(
        staged.stage(&r, &backwards),
        Err(TransitionFailure::Illegal(_))
    ));
    assert!(staged.is_empty());
    tx.rollback().await.unwrap();

    for id in [a, b] {
        let status: String =
            sqlx::query_scalar("SELECT status FROM payments WHERE payment_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(status, "AUTHORIZED", "rolled back: {id}");
    }
    stack.teardown().await;
}
