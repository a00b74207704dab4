//! Trust nothing inside: every route other than `/health`, `/ready` and `/metrics` needs the
//! right credential. The orchestrator's internal API takes only the gateway's signed requests,
//! and the merchant it acts for only from the signed claim (so does the notification
//! service's); ops routes take only the ops key.

use reqwest::Method;
use sagapay_e2e::{Signer, TestStack, DEV_API_KEY, DEV_OPS_KEY};
use sagapay_service_kit::ServiceSigner;
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
        ("notification", "SELECT count(*) FROM webhook_endpoints"),
        (
            "notification",
            "SELECT count(*) FROM webhook_endpoints WHERE deleted_at IS NULL AND previous_secret IS NULL",
        ),
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
    // An endpoint of the merchant's, for the routes that name one.
    let created: Value = stack
        .http
        .post(format!("{}/webhook_endpoints", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "enabled_events": ["payment.failed"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint_id = created["id"].as_str().expect("an endpoint").to_owned();
    let endpoint =
        json!({"url": "http://127.0.0.1:9/other", "enabled_events": ["payment.settled"]});
    let before = footprint(&stack, pid).await;

    let payment = json!({"customer_id": "cust-1", "amount_cents": 100, "currency": "USD",
                         "idempotency_key": "cred-1"});
    let refund = json!({"amount_cents": 100, "idempotency_key": "cred-r1", "reason": "x"});
    // (service, method, path, body): the internal API first, then every ops route.
    #[rustfmt::skip]
    let routes: Vec<(&str, Method, String, Option<Value>)> = vec![
        ("orchestrator", Method::POST, "/internal/payments".into(), Some(payment.clone())),
        ("orchestrator", Method::GET, format!("/internal/payments/{pid}"), None),
        ("orchestrator", Method::POST, format!("/internal/payments/{pid}/refunds"), Some(refund)),
        ("notification", Method::POST, "/internal/webhook_endpoints".into(), Some(endpoint)),
        ("notification", Method::GET, "/internal/webhook_endpoints".into(), None),
        ("notification", Method::DELETE, format!("/internal/webhook_endpoints/{endpoint_id}"), None),
        ("notification", Method::POST, format!("/internal/webhook_endpoints/{endpoint_id}/roll_secret"), None),
        ("notification", Method::GET, format!("/internal/webhook_endpoints/{endpoint_id}/deliveries"), None),
        ("notification", Method::GET, "/internal/events".into(), None),
        ("notification", Method::GET, format!("/internal/events/evt_{}", pid.simple()), None),
        ("orchestrator", Method::GET, "/ops/payments/stuck".into(), None),
        ("orchestrator", Method::POST, format!("/ops/payments/{pid}/retry"), None),
        ("orchestrator", Method::POST, format!("/ops/payments/{pid}/fail"), Some(json!({"reason": "x"}))),
        ("risk", Method::GET, "/ops/reviews".into(), None),
        ("risk", Method::POST, format!("/ops/reviews/{pid}/approve"), Some(json!({"reviewed_by": "x"}))),
        ("risk", Method::POST, format!("/ops/reviews/{pid}/deny"), Some(json!({"reviewed_by": "x"}))),
        ("ledger", Method::GET, "/accounts".into(), None),
        ("ledger", Method::GET, "/accounts/USD:fee_revenue/balance".into(), None),
        ("ledger", Method::GET, "/reconciliation".into(), None),
        ("ledger", Method::GET, format!("/reconciliation/{}", Uuid::now_v7()), None),
        ("provider-adapter", Method::POST, "/dev/provider/outage".into(), Some(json!({"seconds": 30}))),
    ];

    let dev = ServiceSigner::development("gateway");
    // A key this deployment never had, naming itself the gateway.
    let stranger = ServiceSigner::from_seed(
        "gateway",
        &sagapay_service_kit::service_auth::generate_key_pair()
            .unwrap()
            .0,
    )
    .unwrap();
    // Another service, signing with its own (development) key.
    let risk = ServiceSigner::development("risk");
    let gateway = Signer::now(&dev);
    for (service, method, path, body) in &routes {
        let internal = path.starts_with("/internal/");
        let plain = || {
            let req = stack.http.request(
                method.clone(),
                format!("{}{path}", stack.service_url(service)),
            );
            match body {
                Some(b) => req.json(b),
                None => req,
            }
        };
        let signed = |signer: &Signer<'_>, claim: Option<Uuid>| {
            stack.signed_request(service, signer, method.clone(), path, claim, body.as_ref())
        };
        // (how, request, status, error code where it is specific)
        let missing = internal.then_some("service_credential_missing");
        let mut attempts = vec![
            ("without a credential", plain(), 401, missing),
            (
                "with a merchant key",
                plain().header("x-api-key", DEV_API_KEY),
                401,
                missing,
            ),
        ];
        if internal {
            // A valid request for another merchant, its claim swapped for this one's.
            let mut forged = signed(&gateway, Some(Uuid::now_v7())).build().unwrap();
            forged
                .headers_mut()
                .insert("sagapay-merchant", merchant.to_string().parse().unwrap());
            let invalid = Some("service_credential_invalid");
            attempts.extend([
                (
                    "with the ops key",
                    plain().header("x-ops-key", DEV_OPS_KEY),
                    401,
                    missing,
                ),
                (
                    "signed with an unknown key",
                    signed(&Signer::now(&stranger), Some(merchant)),
                    401,
                    invalid,
                ),
                (
                    "signed by another service, whose key this one does not hold",
                    signed(&Signer::now(&risk), Some(merchant)),
                    401,
                    invalid,
                ),
                (
                    "without a merchant claim",
                    signed(&gateway, None),
                    401,
                    Some("merchant_claim_missing"),
                ),
                (
                    "with a forged merchant claim",
                    reqwest::RequestBuilder::from_parts(stack.http.clone(), forged),
                    401,
                    invalid,
                ),
                (
                    "with two merchant claims",
                    signed(&gateway, Some(merchant))
                        .header("sagapay-merchant", Uuid::now_v7().to_string()),
                    401,
                    invalid,
                ),
                (
                    "signed two minutes ago",
                    signed(
                        &Signer {
                            signed_at: gateway.signed_at - 120,
                            ..Signer::now(&dev)
                        },
                        Some(merchant),
                    ),
                    401,
                    Some("service_credential_expired"),
                ),
            ]);
        } else {
            attempts.extend([
                (
                    "with a wrong ops key",
                    plain().header("x-ops-key", "dev-ops-secreT"),
                    401,
                    None,
                ),
                (
                    "with a service credential",
                    signed(&gateway, Some(merchant)),
                    401,
                    None,
                ),
            ]);
        }
        for (how, request, status, code) in attempts {
            let resp = request.send().await.unwrap();
            let got = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            let what = format!("{service} {method} {path} {how}: {answer}");
            assert_eq!(got, status, "{what}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}"
            );
            if let Some(code) = code {
                assert_eq!(answer["error"]["code"], code, "{what}");
            }
        }
    }
    // The merchant travels only as the claim: a body that names one is refused.
    let mut named = payment.clone();
    named["merchant_id"] = json!(merchant);
    let resp = stack
        .signed_request(
            "orchestrator",
            &gateway,
            Method::POST,
            "/internal/payments",
            Some(merchant),
            Some(&named),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(
        footprint(&stack, pid).await,
        before,
        "a refused request wrote something"
    );

    // The right credentials still work: the gateway's signature for the payment's merchant
    // (another merchant's claim sees no such payment), and the ops key on the ledger.
    let read = |claim: Uuid| {
        stack.signed_request(
            "orchestrator",
            &gateway,
            Method::GET,
            &format!("/internal/payments/{pid}"),
            Some(claim),
            None,
        )
    };
    assert_eq!(read(merchant).send().await.unwrap().status(), 200);
    assert_eq!(read(Uuid::now_v7()).send().await.unwrap().status(), 404);
    let (status, _) = stack.ledger_get("/accounts").await;
    assert_eq!(status, 200);
    for open in ["/health", "/ready", "/metrics"] {
        let url = format!("{}{open}", stack.service_url("ledger"));
        let resp = stack.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{open} stays open");
    }
    stack.teardown().await;
}

/// A signed internal request is accepted once. Captured and sent again within its time
/// window, a `roll_secret` of the gateway's was answered again, with the merchant's new
/// webhook secret; now the second use is refused (401 `service_credential_replayed`) and
/// changes nothing, on the notification service and on the orchestrator alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_internal_request_is_refused_and_hands_out_nothing() {
    let stack = TestStack::spawn().await;
    let gateway_db = stack.db("gateway").await;
    let merchant: Uuid =
        sqlx::query_scalar("SELECT merchant_id FROM merchants WHERE name = 'dev-merchant'")
            .fetch_one(&gateway_db)
            .await
            .unwrap();
    let created: Value = stack
        .http
        .post(format!("{}/webhook_endpoints", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(&json!({"url": "http://127.0.0.1:9/hooks", "enabled_events": ["payment.settled"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = created["id"].as_str().unwrap().to_owned();
    let key = ServiceSigner::development("gateway");
    let roll = stack
        .signed_request(
            "notification",
            &Signer::now(&key),
            Method::POST,
            &format!("/internal/webhook_endpoints/{endpoint}/roll_secret"),
            Some(merchant),
            Some(&json!({"expires_in_s": 0})),
        )
        .build()
        .unwrap();
    let captured = roll.try_clone().expect("a request with a body in memory");
    let first = stack.http.execute(roll).await.unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let notification = stack.db("notification").await;
    let secret = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT secret FROM webhook_endpoints WHERE endpoint_id = $1::uuid",
        )
        .bind(&endpoint)
        .fetch_one(&notification)
        .await
        .unwrap()
    };
    let after_first = secret().await;
    let again = stack.http.execute(captured).await.unwrap();
    assert_eq!(again.status(), 401);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "service_credential_replayed",
        "{body}"
    );
    assert!(!body.to_string().contains("whsec_"), "{body}");
    assert_eq!(
        secret().await,
        after_first,
        "the replay rolled the secret again"
    );

    // The orchestrator refuses a replayed payment creation the same way.
    let create = stack
        .signed_request(
            "orchestrator",
            &Signer::now(&key),
            Method::POST,
            "/internal/payments",
            Some(merchant),
            Some(
                &json!({"customer_id": "cust-replay", "amount_cents": 100, "currency": "USD",
                         "idempotency_key": "replayed-create"}),
            ),
        )
        .build()
        .unwrap();
    let captured = create.try_clone().unwrap();
    assert_eq!(stack.http.execute(create).await.unwrap().status(), 201);
    let again = stack.http.execute(captured).await.unwrap();
    assert_eq!(again.status(), 401);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "service_credential_replayed",
        "{body}"
    );
    stack.teardown().await;
}
