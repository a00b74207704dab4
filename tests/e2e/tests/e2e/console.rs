//! The operators' console in a real headless Chromium, on the real stack: an operator logs
//! in, finds a payment and reads its timeline, approves a review and sees the payment settle,
//! resends a webhook (the receiver gets the same event again), replays a dead letter after its
//! cause was fixed (dry run first; the payment then settles), and every action is recorded
//! with the operator's name. And what it refuses: a wrong password, a merchant's API key as a
//! login, an action without its CSRF token, a viewer's action, a flood of logins, a request
//! without a session. Each page is photographed (`.local/console-screenshots/`).

use axum::extract::State;
use axum::routing::post;
use fantoccini::Locator;
use sagapay_domain::Currency;
use sagapay_e2e::browser::Browser;
use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_API_KEY};
use sagapay_operations::dlq::{self, Filter};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);
const PAGE: Duration = Duration::from_secs(15);

/// A webhook receiver: every event it was sent, by id.
#[derive(Default)]
struct Received(Mutex<Vec<Value>>);

impl Received {
    fn of_payment(&self, payment_id: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["data"]["object"]["payment_id"] == payment_id)
            .cloned()
            .collect()
    }
}

async fn start_receiver(rx: Arc<Received>) -> String {
    let app = axum::Router::new()
        .route(
            "/hooks",
            post(|State(rx): State<Arc<Received>>, body: String| async move {
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    rx.0.lock().unwrap().push(v);
                }
                "ok"
            }),
        )
        .with_state(rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hooks")
}

async fn log_in(b: &Browser, base: &str, name: &str, password: &str) {
    b.goto(&format!("{base}/login")).await;
    b.fill("username", name).await;
    b.fill("password", password).await;
    b.click("form[action='/login'] button").await;
}

async fn ledger_letters(stack: &TestStack) -> Vec<dlq::Entry> {
    let ledger = Filter {
        service: Some("ledger".into()),
        ..Filter::default()
    };
    dlq::read_all(&stack.kafka(), &stack.ns)
        .await
        .expect("reads the dead letters")
        .into_iter()
        .filter(|e| ledger.matches(e))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_decides_resends_and_replays_in_the_browser() {
    let mut stack = TestStack::spawn_with(StackOptions {
        ledger_currencies: Some(vec![Currency::parse("USD").unwrap()]),
        ..StackOptions::default()
    })
    .await;
    let console = stack.start_console().await;
    let base = console.base_url();
    let rx = Arc::new(Received::default());
    let hook = start_receiver(rx.clone()).await;
    let registered = stack
        .http
        .post(format!("{}/webhook_endpoints", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(&json!({ "url": hook, "enabled_events": ["payment.settled"] }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");
    let settled = stack.settled_payment("console-settled", 2_500, "USD").await;
    let review = stack
        .create_payment_id(json!({"customer_id": "cust-big", "amount_cents": 150_000,
            "currency": "USD", "idempotency_key": "console-review"}))
        .await;
    let eur = stack
        .create_payment_id(json!({"customer_id": "cust-eur", "amount_cents": 4_000,
            "currency": "EUR", "idempotency_key": "console-eur"}))
        .await;
    let mismatch = stack
        .create_payment_id(json!({"customer_id": "cust-mm", "amount_cents": 5_000,
            "currency": "USD", "payment_method": "pm_card_amount_mismatch",
            "idempotency_key": "console-mismatch"}))
        .await;
    stack.wait_for_status(&review, "RISK_REVIEW", WAIT).await;

    let b = Browser::start().await;
    b.goto(&format!("{base}/payments")).await;
    b.wait_for_text("Operator", PAGE, false).await;
    b.screenshot("01-login").await;
    log_in(&b, &base, "ops", "not the password").await;
    b.wait_for_text("Wrong name or password.", PAGE, false)
        .await;
    b.screenshot("02-login-refused").await;
    // A page asked for before the login is where the login leads.
    b.goto(&format!("{base}/payments/{settled}")).await;
    b.fill("username", "ops").await;
    b.fill("password", "dev-ops-secret").await;
    b.click("form[action='/login'] button").await;
    b.wait_for_text("Timeline", PAGE, false).await;
    assert!(b
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&settled));

    find_a_payment(&b, &base, &settled).await;
    approve_a_review(&stack, &b, &base, &review).await;
    accept_another_amount(&stack, &b, &base, &mismatch).await;
    resend_a_webhook(&stack, &b, &base, &rx, &settled).await;
    replay_a_dead_letter(&mut stack, &b, &base, &eur).await;
    the_other_pages(&b, &base).await;
    actions_are_append_only(&stack).await;

    b.close().await;
    console.stop().await.expect("the console stops cleanly");
    stack.teardown().await;
}

async fn find_a_payment(b: &Browser, base: &str, payment_id: &str) {
    b.goto(&format!("{base}/payments")).await;
    b.fill("q", payment_id).await;
    b.click("form.search button").await;
    b.wait_for_text("SETTLED", PAGE, false).await;
    b.screenshot("03-payments").await;
    b.click(&format!("a[href='/payments/{payment_id}']")).await;
    b.wait_for_text("Timeline", PAGE, false).await;
    let text = b.text().await;
    for expected in [
        "CREATED",
        "APPROVED",
        "AUTHORIZED",
        "CAPTURED",
        "SETTLED",
        "25.00 USD",
    ] {
        assert!(
            text.contains(expected),
            "the timeline lacks {expected}:\n{text}"
        );
    }
    // The provider's calls and the ledger's posting beside the timeline.
    assert!(
        text.contains("AUTHORIZE") && text.contains("CAPTURE"),
        "{text}"
    );
    let upper = text.to_uppercase();
    assert!(
        upper.contains("DEBIT") && upper.contains("CREDIT"),
        "{text}"
    );
    let steps = b
        .client
        .find_all(Locator::Css("ol.timeline li"))
        .await
        .unwrap();
    assert!(steps.len() >= 5, "{} steps on the track", steps.len());
    b.screenshot("04-payment").await;
}

async fn approve_a_review(stack: &TestStack, b: &Browser, base: &str, payment_id: &str) {
    b.goto(&format!("{base}/reviews")).await;
    b.wait_for_text(payment_id, PAGE, false).await;
    b.screenshot("05-reviews").await;
    b.click(&format!("tr[data-payment='{payment_id}'] button.approve"))
        .await;
    b.wait_for_text("review approved by ops", PAGE, false).await;
    stack.wait_for_status(payment_id, "SETTLED", WAIT).await;
    b.goto(&format!("{base}/payments/{payment_id}")).await;
    b.wait_for_text("review.approve", PAGE, true).await;
    let text = b.text().await;
    assert!(
        text.contains("SETTLED") && text.contains("1500.00 USD"),
        "{text}"
    );
}

/// A capture of another amount waits for an operator: its card offers accept and fail, the
/// action needs a reason and a confirmation, and accepting settles the payment.
async fn accept_another_amount(stack: &TestStack, b: &Browser, base: &str, payment_id: &str) {
    b.goto(&format!("{base}/attention")).await;
    b.wait_for_text("AMOUNT_MISMATCH", WAIT, true).await;
    b.screenshot("09-attention").await;
    let card = format!("article[data-payment='{payment_id}']");
    let verbs: Vec<String> = {
        let mut v = Vec::new();
        for f in b
            .client
            .find_all(Locator::Css(&format!("{card} form")))
            .await
            .unwrap()
        {
            v.push(f.attr("action").await.unwrap().unwrap_or_default());
        }
        v
    };
    assert_eq!(
        verbs,
        [
            format!("/attention/{payment_id}/accept"),
            format!("/attention/{payment_id}/fail")
        ],
        "a capture of another amount is accepted or failed, not retried"
    );
    // Without the confirmation the browser does not send the form; sent anyway, it is refused.
    let (status, body) = post_form_from_page(
        b,
        &format!("/attention/{payment_id}/accept"),
        None,
        json!({"reason": "no tick"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("confirmation_required"), "{body}");
    let form = format!("{card} form[action$='/accept']");
    let reason = b
        .client
        .find(Locator::Css(&format!("{form} [name=reason]")))
        .await
        .unwrap();
    reason
        .send_keys("the provider's amount is right")
        .await
        .unwrap();
    b.click(&format!("{form} [name=confirm]")).await;
    b.click(&format!("{form} button")).await;
    b.wait_for_text("accept done", PAGE, false).await;
    stack.wait_for_status(payment_id, "SETTLED", WAIT).await;
}

async fn resend_a_webhook(
    stack: &TestStack,
    b: &Browser,
    base: &str,
    rx: &Received,
    payment_id: &str,
) {
    let first = eventually(WAIT, "the settled payment's webhook", || async {
        rx.of_payment(payment_id).pop()
    })
    .await;
    let (delivery,): (uuid::Uuid,) = sqlx::query_as(
        "SELECT d.delivery_id FROM webhook_deliveries d JOIN merchant_events e USING (event_id)
          WHERE e.payment_id = $1",
    )
    .bind(uuid::Uuid::parse_str(payment_id).unwrap())
    .fetch_one(&stack.db("notification").await)
    .await
    .unwrap();
    b.goto(&format!("{base}/webhooks")).await;
    b.wait_for_text("payment.settled", PAGE, false).await;
    b.screenshot("06-webhooks").await;
    b.click(&format!("tr[data-delivery='{delivery}'] button"))
        .await;
    b.wait_for_text("will be sent again now", PAGE, false).await;
    let again = eventually(WAIT, "the resent webhook", || async {
        let got = rx.of_payment(payment_id);
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(again[1]["id"], first["id"], "the same event, again");
}

async fn replay_a_dead_letter(stack: &mut TestStack, b: &Browser, base: &str, payment_id: &str) {
    let letters = eventually(WAIT, "the ledger's dead letter", || async {
        let l = ledger_letters(stack).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    let position = letters[0].position.clone();
    stack.restart_ledger_with_all_currencies().await;
    b.goto(&format!("{base}/dead-letters?service=ledger")).await;
    b.wait_for_text("ledger.post.requested", PAGE, false).await;
    b.click(&format!("details[data-position='{position}'] summary"))
        .await;
    b.wait_for_text("no chart of accounts for EUR", PAGE, false)
        .await;
    b.screenshot("07-dead-letters").await;
    b.click(&format!("details[data-position='{position}'] form button"))
        .await;
    b.wait_for_text("Dry run: nothing was sent", PAGE, false)
        .await;
    b.screenshot("08-replay-dry-run").await;
    assert_eq!(
        stack.get_payment(payment_id).await["status"],
        "CAPTURED",
        "the dry run sent nothing"
    );
    // A replay sends exactly what the dry run showed: a letter it did not show is refused.
    let (status, body) = post_form_from_page(
        b,
        "/dead-letters/replay",
        None,
        json!({"service": "ledger", "confirm": "yes", "positions": format!("{position},0:999999"),
               "reason": "more than shown"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("dead_letters_changed"), "{body}");
    b.fill("reason", "the ledger posts EUR now").await;
    b.click("button.danger").await;
    b.wait_for_text("1 dead letter(s) replayed", PAGE, false)
        .await;
    stack.wait_for_status(payment_id, "SETTLED", WAIT).await;
}

async fn the_other_pages(b: &Browser, base: &str) {
    b.goto(&format!("{base}/system")).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = b.text().await;
        if text.contains("Settled per second: ")
            && !text.contains("Settled per second: no data yet")
        {
            assert!(
                text.contains("orchestrator") && text.contains("ready"),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no chart data:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("10-health").await;
    b.goto(&format!("{base}/reconciliation?run=1&settling_s=0"))
        .await;
    b.wait_for_text("difference(s)", WAIT, false).await;
    b.screenshot("11-reconciliation").await;
    b.goto(&format!("{base}/merchants")).await;
    b.wait_for_text("API keys", PAGE, false).await;
    b.screenshot("12-merchants").await;
    b.goto(&format!("{base}/actions")).await;
    b.wait_for_text("dead_letters.replay", PAGE, false).await;
    let text = b.text().await;
    for action in [
        "review.approve",
        "payment.accept",
        "webhook.resend",
        "dead_letters.replay",
    ] {
        assert!(text.contains(action), "{action} is not recorded:\n{text}");
    }
    assert!(
        text.contains("the ledger posts EUR now"),
        "the reason is recorded"
    );
    b.screenshot("13-actions").await;
}

/// The record of operators' actions keeps what was written.
async fn actions_are_append_only(stack: &TestStack) {
    let db = stack.db("console").await;
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM operator_actions WHERE outcome <> 'started'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(n >= 3, "{n} actions recorded");
    for statement in [
        "DELETE FROM operator_actions",
        "UPDATE operator_actions SET reason = 'nothing to see'",
        "TRUNCATE operator_actions",
    ] {
        let refused = sqlx::query(statement).execute(&db).await.unwrap_err();
        assert!(
            refused.to_string().contains("append-only"),
            "{statement}: {refused}"
        );
    }
}

/// A `fetch` POST from the page, with the CSRF token of its logout form unless `token` is
/// given: its status and body.
async fn post_from_page(b: &Browser, path: &str, token: Option<&str>) -> (u64, String) {
    post_form_from_page(b, path, token, json!({"reason": "trying"})).await
}

/// A `fetch` POST of `fields` from the page, with a CSRF token as [`post_from_page`].
async fn post_form_from_page(
    b: &Browser,
    path: &str,
    token: Option<&str>,
    fields: Value,
) -> (u64, String) {
    let script = "const [path, given, fields, done] = arguments;
        const token = given ?? document.querySelector('form[action=\"/logout\"] [name=csrf_token]').value;
        fetch(path, {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'},
                     body: new URLSearchParams({...fields, csrf_token: token})})
          .then(async r => done([r.status, await r.text()]));";
    let args = vec![json!(path), token.map_or(Value::Null, |t| json!(t)), fields];
    let v = b
        .client
        .execute_async(script, args)
        .await
        .expect("the script runs");
    (v[0].as_u64().unwrap(), v[1].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_refuses_strangers_viewers_and_forged_forms() {
    let stack = TestStack::spawn().await;
    let console = stack.start_console().await;
    let base = console.base_url();
    let viewer_password = sagapay_console::operators::create(
        &stack.db("console").await,
        "viewer-vic",
        sagapay_console::operators::Role::Viewer,
    )
    .await
    .unwrap();
    let review = stack
        .create_payment_id(json!({"customer_id": "cust-big", "amount_cents": 150_000,
            "currency": "USD", "idempotency_key": "refused-review"}))
        .await;
    stack.wait_for_status(&review, "RISK_REVIEW", WAIT).await;
    let approve = format!("/reviews/{review}/approve");

    let b = Browser::start().await;
    // A merchant's API key is not an operator's login, by name or as the development
    // operator's password.
    for (name, password) in [("dev", DEV_API_KEY), ("ops", DEV_API_KEY)] {
        log_in(&b, &base, name, password).await;
        b.wait_for_text("Wrong name or password.", PAGE, false)
            .await;
    }
    // A viewer sees the queue without buttons, and the route refuses its action.
    log_in(&b, &base, "viewer-vic", &viewer_password).await;
    b.wait_for_text("viewer", PAGE, false).await;
    b.goto(&format!("{base}/reviews")).await;
    b.wait_for_text(&review, PAGE, false).await;
    let buttons = b
        .client
        .find_all(Locator::Css("button.approve"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "a viewer is shown no approve button");
    b.screenshot("14-viewer-reviews").await;
    let (status, body) = post_from_page(&b, &approve, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("operator_not_admin"), "{body}");
    b.click("form[action='/logout'] button").await;
    b.wait_for_text("Log in", PAGE, false).await;

    // An admin's form without its CSRF token, or with another, is refused.
    log_in(&b, &base, "ops", "dev-ops-secret").await;
    b.wait_for_text("Log out", PAGE, false).await;
    b.goto(&format!("{base}/reviews")).await;
    b.wait_for_text(&review, PAGE, false).await;
    b.client
        .execute(
            "document.querySelectorAll('form.action [name=csrf_token]').forEach(e => e.remove());",
            vec![],
        )
        .await
        .unwrap();
    b.click(&format!("tr[data-payment='{review}'] button.approve"))
        .await;
    b.wait_for_text("csrf_token_invalid", PAGE, false).await;
    b.screenshot("15-csrf-refused").await;
    b.goto(&format!("{base}/reviews")).await;
    let (status, body) = post_from_page(&b, &approve, Some("forged")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("csrf_token_invalid"), "{body}");
    assert_eq!(
        stack.get_payment(&review).await["status"],
        "RISK_REVIEW",
        "nothing refused was done"
    );
    b.close().await;

    refusals_without_a_browser(&base).await;
    console.stop().await.expect("the console stops cleanly");
    stack.teardown().await;
}

/// No session, a merchant's key in a header, a login without its form's token, a flood of
/// logins: each refused with its code; and every answer forbids caching and framing.
async fn refusals_without_a_browser(base: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/payments", "/system/live", "/dead-letters"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("x-api-key", DEV_API_KEY)
            .header("x-ops-key", "dev-ops-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(to.starts_with("/login?next=%2F"), "{path} leads to {to}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let r = http
        .post(format!("{base}/login"))
        .form(&[("username", "ops"), ("password", "dev-ops-secret")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("csrf_token_invalid"));
    // Five tries of one name pass the limit's burst; the sixth is refused, however right.
    let mut last = None;
    for _ in 0..6 {
        let form = http.get(format!("{base}/login")).send().await.unwrap();
        let cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
        let token = cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        let page = form.text().await.unwrap();
        assert!(page.contains(&token), "the form carries its cookie's token");
        let r = http
            .post(format!("{base}/login"))
            .header("cookie", format!("sagapay_console_login={token}"))
            .form(&[
                ("username", "flood"),
                ("password", "guess"),
                ("csrf_token", &token),
            ])
            .send()
            .await
            .unwrap();
        last = Some((
            r.status(),
            r.headers().get("retry-after").cloned(),
            r.text().await.unwrap(),
        ));
    }
    let (status, retry_after, body) = last.unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(
        retry_after.is_some() && body.contains("too_many_logins"),
        "{body}"
    );
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
}

/// Logs `name` in with a plain HTTP client: the session cookie (`name=value`).
async fn session_cookie(http: &reqwest::Client, base: &str, name: &str, password: &str) -> String {
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let login_cookie = login_cookie.split(';').next().unwrap().to_owned();
    let token = login_cookie.split_once('=').unwrap().1.to_owned();
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &login_cookie)
        .form(&[
            ("username", name),
            ("password", password),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("sagapay_console="))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A session ends after its idle time; the health page's own refreshes do not keep it
/// alive, an operator's requests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_session_ends_and_automatic_refreshes_do_not_keep_it() {
    let stack = TestStack::spawn().await;
    let idle = Duration::from_secs(2);
    let console = stack.start_console_with(|c| c.session_idle = idle).await;
    let base = console.base_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |cookie: String, refresh: bool| {
        let mut req = http.get(format!("{base}/actions")).header("cookie", cookie);
        if refresh {
            req = req.header("x-console-refresh", "1");
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let active = session_cookie(&http, &base, "ops", "dev-ops-secret").await;
    let idle_tab = session_cookie(&http, &base, "ops", "dev-ops-secret").await;
    // Three idle times: one session is used by its operator all along, the other only
    // refreshed by a page.
    let until = std::time::Instant::now() + idle * 3;
    while std::time::Instant::now() < until {
        assert_eq!(
            get(active.clone(), false).await,
            200,
            "an operator's session stays"
        );
        let refreshed = get(idle_tab.clone(), true).await;
        tokio::time::sleep(idle / 4).await;
        if refreshed == 303 {
            break;
        }
    }
    assert_eq!(
        get(idle_tab.clone(), false).await,
        303,
        "the refreshed-only session ended"
    );
    assert_eq!(get(active.clone(), false).await, 200);
    console.stop().await.expect("the console stops cleanly");
    stack.teardown().await;
}

/// The cells of the table row of `data-merchant="<merchant>"` in `page`.
fn merchant_row(page: &str, merchant: &str) -> Vec<String> {
    let start = page
        .find(&format!("data-merchant=\"{merchant}\""))
        .unwrap_or_else(|| panic!("no row of merchant {merchant} in:\n{page}"));
    let row = &page[start..start + page[start..].find("</tr>").unwrap()];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let inner = &cell[cell.find('>').unwrap() + 1..];
            let text: String = inner
                .split('<')
                .map(|part| part.rsplit('>').next().unwrap_or(""))
                .collect();
            text.trim().to_owned()
        })
        .collect()
}

/// A merchant refused at its own limit is shown so on the health page, beside another
/// merchant that was not (the counts come from the orchestrator's `GET /ops/admission`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_health_page_shows_each_merchants_payments_in_flight_and_refusals() {
    let stack = TestStack::spawn_with(StackOptions {
        admission_max_in_flight: Some(20),
        admission_merchant_max_in_flight: Some(1),
        ..StackOptions::default()
    })
    .await;
    let console = stack.start_console().await;
    let base = console.base_url();
    let (slow, slow_key) = stack.merchant("Slow Cards Ltd").await;
    let (calm, calm_key) = stack.merchant("Calm Cards Ltd").await;
    let payment = |key: &str, card: &str| {
        json!({"customer_id": "cust-1", "amount_cents": 1_000, "currency": "USD",
               "payment_method": card, "idempotency_key": key})
    };
    // The first slow payment holds the merchant's one place (its authorization times out and
    // is retried for seconds); the second is refused at the merchant's own limit.
    let first = stack
        .post_payment_as(&slow_key, &payment("slow-1", "pm_card_timeout"))
        .await;
    assert!(first.status().is_success(), "{first:?}");
    let second = stack
        .post_payment_as(&slow_key, &payment("slow-2", "pm_card_timeout"))
        .await;
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["sagapay-overload-scope"], "merchant");
    // The other merchant's one payment is slow too: its row is there, in flight, not refused.
    let calm_payment = stack
        .post_payment_as(&calm_key, &payment("calm-1", "pm_card_timeout"))
        .await;
    assert!(calm_payment.status().is_success(), "{calm_payment:?}");

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = session_cookie(&http, &base, "ops", "dev-ops-secret").await;
    let page = http
        .get(format!("{base}/system/live"))
        .header("cookie", cookie)
        .header("x-console-refresh", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Merchant, in flight, parked, refused, at its own limit, own limit.
    let row = merchant_row(&page, &slow.to_string());
    assert_eq!(
        row[3..5],
        ["1", "1"],
        "the slow merchant's refusal: {row:?}"
    );
    assert_eq!(row[1], "1", "its one payment in flight: {row:?}");
    let row = merchant_row(&page, &calm.to_string());
    assert_eq!(row[1], "1", "its one payment in flight: {row:?}");
    assert_eq!(
        row[3..5],
        ["0", "0"],
        "the calm merchant was never refused: {row:?}"
    );
    console.stop().await.expect("the console stops cleanly");
    stack.teardown().await;
}
