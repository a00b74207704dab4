//! The frame of every page (navigation, who is logged in, logout), the login page, and the
//! small pieces pages share: amounts in their currency's units, times, statuses as badges,
//! and the hidden CSRF field of every form that changes something.

use crate::operators::Role;
use crate::session::Session;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

/// The pages, in the navigation's order: (path, title).
const NAV: [(&str, &str); 9] = [
    ("/payments", "Payments"),
    ("/attention", "Needs attention"),
    ("/reviews", "Reviews"),
    ("/dead-letters", "Dead letters"),
    ("/webhooks", "Webhooks"),
    ("/system", "Health"),
    ("/reconciliation", "Reconciliation"),
    ("/merchants", "Merchants"),
    ("/actions", "Actions"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " — SagaPay console" }
            link rel="stylesheet" href="/static/console.css";
            script src="/static/console.js" defer {}
        }
    }
}

/// A page of the console: `active` is its path in the navigation.
pub fn page(session: &Session, active: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header class="top" {
                    a class="brand" href="/payments" { "SagaPay" span { "console" } }
                    nav {
                        @for (path, name) in NAV {
                            a href=(path) class=[(path == active).then_some("active")] { (name) }
                        }
                    }
                    div class="who" {
                        span class="operator" { (session.operator) }
                        span class={ "role " (session.role.as_str()) } { (session.role.as_str()) }
                        form method="post" action="/logout" class="inline" {
                            (csrf(session))
                            button type="submit" class="link" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login page, with the form's CSRF token and an error if the last try failed.
pub fn login_page(
    csrf_token: &str,
    error: Option<(&str, &str)>,
    expired: bool,
    next: Option<&str>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body class="login" {
                main class="login-box" {
                    h1 { "SagaPay " span { "console" } }
                    @if expired { p class="notice" { "Your session ended: log in again." } }
                    @if let Some((code, message)) = error {
                        p class="error" data-code=(code) { (message) }
                    }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf_token" value=(csrf_token);
                        @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                        label { "Operator" input type="text" name="username" autocomplete="username" required autofocus; }
                        label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// The hidden CSRF field of a form that changes something.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(session.csrf_token); }
}

/// Whether the session may act (forms are shown to admins only; the routes check anyway).
pub fn can_act(session: &Session) -> bool {
    session.role == Role::Admin
}

/// An amount in minor units shown in its currency's major units: `2500 USD` → `25.00 USD`.
pub fn money(minor: i64, currency: &str) -> String {
    let exponent = sagapay_domain::Currency::parse(currency)
        .map(|c| c.minor_unit_exponent())
        .unwrap_or(2) as u32;
    if exponent == 0 {
        return format!("{minor} {currency}");
    }
    let unit = 10i64.pow(exponent);
    let sign = if minor < 0 { "-" } else { "" };
    let (major, rest) = (
        minor.unsigned_abs() / unit as u64,
        minor.unsigned_abs() % unit as u64,
    );
    format!(
        "{sign}{major}.{rest:0width$} {currency}",
        width = exponent as usize
    )
}

/// A time as operators read it: UTC, to the second.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    let class = match status {
        "SETTLED" | "SUCCEEDED" | "DELIVERED" | "REFUNDED" | "PARTIALLY_REFUNDED" | "ready" => "ok",
        "FAILED" | "REVERSED" | "DECLINED" | "ERROR" | "NON_RETRYABLE" | "down" => "bad",
        "CANCELED" | "TIMEOUT" | "RETRY_EXHAUSTED" | "PENDING" | "RISK_REVIEW" => "warn",
        _ => "info",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_their_currency() {
        assert_eq!(money(2500, "USD"), "25.00 USD");
        assert_eq!(money(2500, "JPY"), "2500 JPY");
        assert_eq!(money(2500, "KWD"), "2.500 KWD");
        assert_eq!(money(5, "USD"), "0.05 USD");
    }
}
