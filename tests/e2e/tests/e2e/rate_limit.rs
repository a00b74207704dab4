use sagapay_e2e::{StackOptions, TestStack, DEV_API_KEY};
use std::time::Instant;
use uuid::Uuid;

/// With 2 requests per second and a burst of 5, a client sending as fast as it can is admitted
/// the burst plus what refilled while it sent, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_is_admitted_its_burst_plus_its_rate_and_then_gets_429() {
    let (per_second, burst) = (2u32, 5u32);
    let stack = TestStack::spawn_with(StackOptions {
        gateway_rate_limit: Some((per_second, burst)),
        ..StackOptions::default()
    })
    .await;
    let url = format!("{}/payments/{}", stack.gateway_url(), Uuid::now_v7());
    let started = Instant::now();
    let mut admitted = 0u32;
    let mut first_refusal = None;
    for i in 0..30 {
        let resp = stack
            .http
            .get(&url)
            .header("x-api-key", DEV_API_KEY)
            .send()
            .await
            .unwrap();
        if i == 0 {
            assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
            assert_eq!(resp.headers()["x-ratelimit-remaining"], "4");
        }
        if resp.status() == 429 {
            if first_refusal.is_none() {
                let retry_after: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    retry_after, 1,
                    "at 2 per second a token is at most 0.5 s away"
                );
                let body: serde_json::Value = resp.json().await.unwrap();
                first_refusal = Some(body);
            }
        } else {
            assert_eq!(resp.status(), 404, "an admitted request reaches the route");
            admitted += 1;
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let budget = burst + (elapsed_s * f64::from(per_second)).ceil() as u32;
    assert!(
        admitted >= burst && admitted <= budget,
        "admitted {admitted}, budget {budget} over {elapsed_s:.2} s"
    );
    let refusal = first_refusal.expect("some requests were refused");
    assert_eq!(refusal["error"]["type"], "rate_limit_error");
    assert_eq!(refusal["error"]["code"], "rate_limited");
    assert!(refusal["request_id"].is_string());
    stack.teardown().await;
}
