//! `GET /payments` and `GET /events`: newest first, a page at a time; a walk sees every item
//! that existed when it began exactly once while new ones arrive, and never another
//! merchant's.

use sagapay_e2e::{eventually, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

async fn get(stack: &TestStack, path: &str, key: &str) -> (u16, Value) {
    let resp = stack
        .http
        .get(format!("{}{path}", stack.gateway_url()))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn pay(stack: &TestStack, key: &str, idempotency_key: &str) -> String {
    let resp = stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", key)
        // A customer each: risk's velocity rule would send a burst of one customer to review.
        .json(
            &json!({"customer_id": format!("cust-{idempotency_key}"), "amount_cents": 1234,
                      "currency": "USD", "idempotency_key": idempotency_key}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["payment_id"].as_str().unwrap().to_owned()
}

/// Walks `path` (which has a `limit`) page by page, calling `between` after the first page;
/// the ids seen, in order.
async fn walk(
    stack: &TestStack,
    path: &str,
    id_field: &str,
    mut between: impl AsyncFnMut(),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => path.to_owned(),
            Some(c) => format!("{path}&starting_after={c}"),
        };
        let (status, page) = get(stack, &url, DEV_API_KEY).await;
        assert_eq!(status, 200, "{page}");
        let items = page["data"].as_array().unwrap();
        seen.extend(
            items
                .iter()
                .map(|i| i[id_field].as_str().unwrap().to_owned()),
        );
        if cursor.is_none() {
            between().await;
        }
        if !page["has_more"].as_bool().unwrap() {
            return seen;
        }
        cursor = seen.last().cloned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_walk_every_payment_and_event_once_while_new_ones_arrive() {
    let stack = TestStack::spawn().await;
    let (_, other_key) = stack.merchant("listing-other").await;
    let theirs = pay(&stack, &other_key, "other-1").await;
    let mut ours = Vec::new();
    for i in 0..7 {
        ours.push(pay(&stack, DEV_API_KEY, &format!("list-{i}")).await);
    }
    for pid in &ours {
        stack
            .wait_for_status(pid, "SETTLED", Duration::from_secs(40))
            .await;
    }
    // Their events are recorded once the payments settle.
    let (notification, ours_len) = (stack.db("notification").await, ours.len() as i64);
    eventually(Duration::from_secs(30), "events recorded", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM merchant_events")
            .fetch_one(&notification)
            .await
            .unwrap();
        // Ours, and the other merchant's one.
        (n > ours_len).then_some(())
    })
    .await;

    let mut newer = Vec::new();
    let walked = walk(&stack, "/payments?limit=3", "payment_id", async || {
        for i in 0..2 {
            newer.push(pay(&stack, DEV_API_KEY, &format!("list-new-{i}")).await);
        }
    })
    .await;
    let mut expected = ours.clone();
    expected.reverse();
    assert_eq!(
        walked, expected,
        "newest first, each once, only what existed"
    );
    assert!(!walked.contains(&theirs));

    // The newer ones' events too, before the next walk begins.
    for pid in &newer {
        stack
            .wait_for_status(pid, "SETTLED", Duration::from_secs(40))
            .await;
    }
    let before_walk = ours_len + newer.len() as i64;
    eventually(Duration::from_secs(30), "newer events recorded", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM merchant_events")
            .fetch_one(&notification)
            .await
            .unwrap();
        (n > before_walk).then_some(())
    })
    .await;
    let events = walk(&stack, "/events?limit=2", "id", async || {
        for i in 0..2 {
            let pid = pay(&stack, DEV_API_KEY, &format!("list-ev-{i}")).await;
            stack
                .wait_for_status(&pid, "SETTLED", Duration::from_secs(40))
                .await;
        }
    })
    .await;
    let distinct: HashSet<&String> = events.iter().collect();
    assert_eq!(distinct.len(), events.len(), "an event twice: {events:?}");
    assert_eq!(events.len() as i64, before_walk, "{events:?}");
    let (_, their_events) = get(&stack, "/events?limit=100", &other_key).await;
    for e in their_events["data"].as_array().unwrap() {
        assert!(!events.contains(&e["id"].as_str().unwrap().to_owned()));
    }

    // Filters, and what is refused.
    let (status, settled) = get(&stack, "/payments?status=SETTLED&limit=100", DEV_API_KEY).await;
    assert_eq!(status, 200);
    assert!(settled["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["status"] == "SETTLED"));
    let (_, future) = get(&stack, "/payments?created_gte=4102444800", DEV_API_KEY).await;
    assert_eq!(future["data"].as_array().unwrap().len(), 0);
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("status=NOPE", "invalid_status"),
        ("starting_after=not-an-id", "invalid_starting_after"),
        ("sort=asc", "invalid_query"),
    ] {
        let (status, err) = get(&stack, &format!("/payments?{query}"), DEV_API_KEY).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}: {err}"
        );
    }
    for (query, code) in [
        ("limit=abc", "invalid_query"),
        ("sort=asc", "invalid_query"),
        ("type=payment.exploded", "invalid_type"),
    ] {
        let (status, err) = get(&stack, &format!("/events?{query}"), DEV_API_KEY).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}: {err}"
        );
    }
    // A well-formed cursor that names nothing of this merchant's (another merchant's
    // payment, an event that does not exist) is not found.
    for path in [
        format!("/payments?starting_after={theirs}"),
        "/events?starting_after=evt_00000000000000000000000000000000".to_owned(),
    ] {
        let (status, err) = get(&stack, &path, DEV_API_KEY).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("invalid_starting_after")),
            "{path}: {err}"
        );
    }
    stack.teardown().await;
}
