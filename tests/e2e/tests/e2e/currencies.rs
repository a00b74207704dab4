//! Money by its currency's exponent: the fixed fee, the review threshold and the largest
//! payment are each the currency's own, and three-decimal currencies (KWD, BHD) settle beside
//! USD and JPY.

use sagapay_e2e::TestStack;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);

async fn fee_revenue(stack: &TestStack, currency: &str) -> i64 {
    let (_, body) = stack
        .ledger_get(&format!("/accounts/{currency}:fee_revenue/balance"))
        .await;
    body["balance_minor"]
        .as_i64()
        .unwrap_or_else(|| panic!("{body}"))
}

/// 2.9 % plus about $0.30 in each currency: ¥45 (not ¥30 read as cents), 0.090 KWD, 0.120 BHD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_currency_pays_its_own_fixed_fee() {
    let stack = TestStack::spawn().await;
    for (key, amount, currency) in [
        ("fee-usd", 2_500, "USD"),
        ("fee-jpy", 2_500, "JPY"),
        ("fee-kwd", 25_000, "KWD"),
        ("fee-bhd", 1_000, "BHD"),
    ] {
        let pid = stack.settled_payment(key, amount, currency).await;
        let p = stack.get_payment(&pid).await;
        assert_eq!(
            (p["amount_cents"].as_i64(), p["currency"].as_str()),
            (Some(amount), Some(currency))
        );
    }
    // USD: 72.5 -> 73 + 30; JPY: 72.5 -> 73 + 45; KWD: 725 + 90; BHD: 29 + 120.
    for (currency, fee) in [("USD", 103), ("JPY", 118), ("KWD", 815), ("BHD", 149)] {
        assert_eq!(fee_revenue(&stack, currency).await, fee, "{currency}");
    }
    stack.teardown().await;
}

/// About $1,000 goes to review in every currency: ¥120,000 (about $800) settles where 120,000
/// US cents ($1,200) waits for review; 250.000 KWD settles, 300.001 KWD waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_review_threshold_is_stated_per_currency() {
    let stack = TestStack::spawn().await;
    let make = |key: &'static str, amount: i64, currency: &'static str| {
        json!({"customer_id": format!("cust-{key}"), "amount_cents": amount,
               "currency": currency, "idempotency_key": key})
    };
    let jpy = stack
        .create_payment_id(make("rev-jpy", 120_000, "JPY"))
        .await;
    let usd = stack
        .create_payment_id(make("rev-usd", 120_000, "USD"))
        .await;
    let kwd_low = stack
        .create_payment_id(make("rev-kwd-low", 250_000, "KWD"))
        .await;
    let kwd_high = stack
        .create_payment_id(make("rev-kwd-high", 300_001, "KWD"))
        .await;
    stack.wait_for_status(&jpy, "SETTLED", WAIT).await;
    stack.wait_for_status(&kwd_low, "SETTLED", WAIT).await;
    stack.wait_for_status(&usd, "RISK_REVIEW", WAIT).await;
    stack.wait_for_status(&kwd_high, "RISK_REVIEW", WAIT).await;
    // The largest payment too: about $1,000,000, so ¥149,000,000 passes where $1,490,000 does not.
    let (status, _) = stack
        .create_payment(make("max-jpy", 149_000_000, "JPY"))
        .await;
    assert_eq!(status, 201);
    let (status, refused) = stack
        .create_payment(make("max-usd", 149_000_000, "USD"))
        .await;
    // Well formed, above the currency's configured limit: refused by policy.
    assert_eq!(status, 422);
    assert_eq!(refused["error"]["code"], "invalid_amount");
    stack.teardown().await;
}
