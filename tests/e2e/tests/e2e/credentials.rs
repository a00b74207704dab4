//! Trust nothing inside: every route other than `/health`, `/ready` and `/metrics` needs the
//! right credential. The orchestrator's internal API takes only the gateway's signed requests,
//! and the merchant it acts for only from the signed claim; ops routes take only the ops key.

use reqwest::Method;
use sagapay_e2e::{TestStack, DEV_API_KEY, DEV_OPS_KEY};
use sagapay_service_kit::ServiceKeys;
use serde_json::{json, Value};
use uuid::Uuid;

/// What must be unchanged after every refused request.
async fn footprint(stack: &TestStack, pid: Uuid) -> Vec<i64> {
    let mut counts = Vec::new();
    for (service, sql) in [
        ("orchestrator", "SELECT count(*) FROM payments"),
        ("orchestrator", "SELECT count(*) FROM refunds"),
        ("orchestrator", "SELECT count(*) FROM payment_timeline"),
        ("orchestrator", "SELECT count(*) FROM outbox"),
        (
            "provider-adapter",
            "SELECT count(*) FROM provider_operations",
        ),
        ("risk", "SELECT count(*) FROM risk_decisions"),
    ] {
        let pool = stack.db(service).await;
        counts.push(sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap());
    }
    let status = stack.get_payment(&pid.to_string()).await["status"].clone();
    counts.push(i64::from(status == "SETTLED"));
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_refuses_a_missing_or_wrong_credential_and_writes_nothing() {
    let stack = TestStack::spawn().await;
    let pid: Uuid = stack
        .settled_payment("credentials", 2_500, "USD")
        .await
        .parse()
        .unwrap();
    let orchestrator = stack.db("orchestrator").await;
    let merchant: Uuid =
        sqlx::query_scalar("SELECT merchant_id FROM payments WHERE payment_id = $1")
            .bind(pid)
            .fetch_one(&orchestrator)
            .await
            .unwrap();
    let before = footprint(&stack, pid).await;

    let payment = json!({"customer_id": "cust-1", "amount_cents": 100, "currency": "USD",
                         "idempotency_key": "cred-1"});
    let refund = json!({"amount_cents": 100, "idempotency_key": "cred-r1", "reason": "x"});
    let internal: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/internal/payments".into(),
            Some(payment.clone()),
        ),
        (Method::GET, format!("/internal/payments/{pid}"), None),
        (
            Method::POST,
            format!("/internal/payments/{pid}/refunds"),
            Some(refund.clone()),
        ),
    ];
    let ops: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            "orchestrator",
            Method::GET,
            "/ops/payments/stuck".into(),
            None,
        ),
        (
            "orchestrator",
            Method::POST,
            format!("/ops/payments/{pid}/retry"),
            None,
        ),
        (
            "orchestrator",
            Method::POST,
            format!("/ops/payments/{pid}/fail"),
            Some(json!({"reason": "x"})),
        ),
        ("risk", Method::GET, "/ops/reviews".into(), None),
        (
            "risk",
            Method::POST,
            format!("/ops/reviews/{pid}/approve"),
            Some(json!({"reviewed_by": "x"})),
        ),
        (
            "risk",
            Method::POST,
            format!("/ops/reviews/{pid}/deny"),
            Some(json!({"reviewed_by": "x"})),
        ),
        ("ledger", Method::GET, "/accounts".into(), None),
        (
            "ledger",
            Method::GET,
            "/accounts/USD:fee_revenue/balance".into(),
            None,
        ),
        ("ledger", Method::GET, "/reconciliation".into(), None),
        (
            "ledger",
            Method::GET,
            format!("/reconciliation/{}", Uuid::now_v7()),
            None,
        ),
        (
            "provider-adapter",
            Method::POST,
            "/dev/provider/outage".into(),
            Some(json!({"seconds": 30})),
        ),
    ];

    let expect = |what: &str, resp: reqwest::Response, status: u16, code: Option<&str>| {
        let what = what.to_owned();
        let code = code.map(str::to_owned);
        async move {
            let got = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(got, status, "{what}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
            if let Some(code) = code {
                assert_eq!(body["error"]["code"], code, "{what}: {body}");
            }
        }
    };
    let dev = ServiceKeys::development();
    let stranger = ServiceKeys::new(&["a-key-this-deployment-never-had-0123456789"]);
    let url = |service: &str, path: &str| format!("{}{path}", stack.service_url(service));
    let with_body = |req: reqwest::RequestBuilder, body: &Option<Value>| match body {
        Some(b) => req.json(b),
        None => req,
    };

    for (method, path, body) in &internal {
        let what = |how: &str| format!("{method} {path} {how}");
        let plain = || {
            with_body(
                stack
                    .http
                    .request(method.clone(), url("orchestrator", path)),
                body,
            )
        };
        expect(
            &what("without a credential"),
            plain().send().await.unwrap(),
            401,
            Some("service_credential_missing"),
        )
        .await;
        expect(
            &what("with a merchant key"),
            plain()
                .header("x-api-key", DEV_API_KEY)
                .send()
                .await
                .unwrap(),
            401,
            Some("service_credential_missing"),
        )
        .await;
        expect(
            &what("with the ops key"),
            plain()
                .header("x-ops-key", DEV_OPS_KEY)
                .send()
                .await
                .unwrap(),
            401,
            Some("service_credential_missing"),
        )
        .await;
        let signed = |keys: &ServiceKeys, caller: &str, claim: Option<Uuid>| {
            stack.internal_request(keys, caller, method.clone(), path, claim, body.as_ref())
        };
        expect(
            &what("signed with an unknown key"),
            signed(&stranger, "gateway", Some(merchant))
                .send()
                .await
                .unwrap(),
            401,
            Some("service_credential_invalid"),
        )
        .await;
        expect(
            &what("signed by another service"),
            signed(&dev, "risk", Some(merchant)).send().await.unwrap(),
            403,
            Some("caller_not_allowed"),
        )
        .await;
        expect(
            &what("without a merchant claim"),
            signed(&dev, "gateway", None).send().await.unwrap(),
            401,
            Some("merchant_claim_missing"),
        )
        .await;
        // A valid request for one merchant, its claim swapped for another; and the claim
        // given twice (the signed one and another).
        let bytes = body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let mut forged = with_body(
            stack
                .http
                .request(method.clone(), url("orchestrator", path)),
            body,
        );
        for (name, value) in dev.sign(
            "gateway",
            method.as_str(),
            path,
            Some(Uuid::now_v7()),
            &bytes,
            now,
        ) {
            let value = if name == "sagapay-merchant" {
                merchant.to_string()
            } else {
                value
            };
            forged = forged.header(name, value);
        }
        expect(
            &what("with a forged merchant claim"),
            forged.send().await.unwrap(),
            401,
            Some("service_credential_invalid"),
        )
        .await;
        let twice = signed(&dev, "gateway", Some(merchant))
            .header("sagapay-merchant", Uuid::now_v7().to_string());
        expect(
            &what("with two merchant claims"),
            twice.send().await.unwrap(),
            401,
            Some("service_credential_invalid"),
        )
        .await;
        // Signed two minutes ago: outside the window.
        let bytes = body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let mut old = with_body(
            stack
                .http
                .request(method.clone(), url("orchestrator", path)),
            body,
        );
        for (name, value) in dev.sign(
            "gateway",
            method.as_str(),
            path,
            Some(merchant),
            &bytes,
            chrono::Utc::now().timestamp() - 120,
        ) {
            old = old.header(name, value);
        }
        expect(
            &what("signed too long ago"),
            old.send().await.unwrap(),
            401,
            Some("service_credential_expired"),
        )
        .await;
    }
    // The merchant travels only as the claim: a body that names one is refused.
    let mut named = payment.clone();
    named["merchant_id"] = json!(merchant);
    let resp = stack
        .internal_request(
            &dev,
            "gateway",
            Method::POST,
            "/internal/payments",
            Some(merchant),
            Some(&named),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());

    for (service, method, path, body) in &ops {
        let what = |how: &str| format!("{service} {method} {path} {how}");
        let plain = || with_body(stack.http.request(method.clone(), url(service, path)), body);
        expect(
            &what("without a credential"),
            plain().send().await.unwrap(),
            401,
            None,
        )
        .await;
        expect(
            &what("with a merchant key"),
            plain()
                .header("x-api-key", DEV_API_KEY)
                .send()
                .await
                .unwrap(),
            401,
            None,
        )
        .await;
        expect(
            &what("with a wrong ops key"),
            plain()
                .header("x-ops-key", "dev-ops-secreT")
                .send()
                .await
                .unwrap(),
            401,
            None,
        )
        .await;
        let mut serviced = plain();
        let bytes = body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        for (name, value) in dev.sign(
            "gateway",
            method.as_str(),
            path,
            Some(merchant),
            &bytes,
            chrono::Utc::now().timestamp(),
        ) {
            serviced = serviced.header(name, value);
        }
        expect(
            &what("with a service credential"),
            serviced.send().await.unwrap(),
            401,
            None,
        )
        .await;
    }
    assert_eq!(
        footprint(&stack, pid).await,
        before,
        "a refused request wrote something"
    );

    // The right credentials still work: the gateway's signature for the payment's merchant
    // (another merchant's claim sees no such payment), and the ops key on the ledger.
    let own = stack
        .internal_request(
            &dev,
            "gateway",
            Method::GET,
            &format!("/internal/payments/{pid}"),
            Some(merchant),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let other = stack
        .internal_request(
            &dev,
            "gateway",
            Method::GET,
            &format!("/internal/payments/{pid}"),
            Some(Uuid::now_v7()),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let (status, _) = stack.ledger_get("/accounts").await;
    assert_eq!(status, 200);
    for open in ["/health", "/ready", "/metrics"] {
        let resp = stack.http.get(url("ledger", open)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{open} stays open");
    }
    stack.teardown().await;
}
