//! Dead letters: the namespace's dead-letter topic, filtered by classification, failing
//! service and event type, each letter's body and error; replay one, or every letter a
//! filter matches. A replay is shown as a dry run first (what would be sent where), and sent
//! only when the operator confirms it, with a reason, recorded. Replays publish the original
//! bytes to the original topic (`sagapay_operations::dlq::replay`, as `sagapayctl dlq replay`).

use super::{outcome, Act, ActionForm};
use crate::layout::{badge, can_act, csrf, page, time};
use crate::session::{Refusal, Session};
use crate::state::Console;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use sagapay_operations::dlq::{self, Entry, Filter};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    classification: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    position: String,
}

impl FilterForm {
    fn filter(&self) -> anyhow::Result<Filter> {
        Filter::parse(
            Some(&self.classification),
            Some(&self.service),
            Some(&self.event_type),
            Some(&self.position),
        )
    }

    /// The filter's hidden fields, to carry it from the dry run to the replay.
    fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="classification" value=(self.classification);
            input type="hidden" name="service" value=(self.service);
            input type="hidden" name="event_type" value=(self.event_type);
            input type="hidden" name="position" value=(self.position);
        }
    }
}

async fn matching(state: &Console, f: &FilterForm) -> anyhow::Result<Vec<Entry>> {
    let filter = f.filter()?;
    Ok(dlq::read_all(&state.kafka, &state.namespace)
        .await?
        .into_iter()
        .filter(|e| filter.matches(e))
        .collect())
}

/// `GET /dead-letters`.
pub async fn list(
    State(state): State<Console>,
    session: Session,
    Query(f): Query<FilterForm>,
) -> Response {
    let entries = match matching(&state, &f).await {
        Ok(e) => e,
        Err(e) => return super::unavailable(e),
    };
    let body = html! {
        form method="get" action="/dead-letters" class="search" {
            select name="classification" {
                option value="" { "any classification" }
                @for c in ["NON_RETRYABLE", "RETRY_EXHAUSTED"] { option value=(c) selected[f.classification == c] { (c) } }
            }
            input type="text" name="service" placeholder="failing service" value=(f.service);
            input type="text" name="event_type" placeholder="event type" value=(f.event_type);
            button type="submit" { "Filter" }
        }
        p class="meta" { (entries.len()) " dead letter(s)" }
        (summary(&entries))
        @if can_act(&session) && !entries.is_empty() {
            form method="post" action="/dead-letters/replay" class="action" {
                (csrf(&session)) (FilterForm { position: String::new(), ..f.clone() }.hidden())
                button type="submit" { "Replay all " (entries.len()) " shown (dry run first)" }
            }
        }
        @for e in &entries { (letter(&session, e)) }
    };
    page(&session, "/dead-letters", "Dead letters", body).into_response()
}

/// How many letters each service dead-lettered, by classification and event type, each row
/// a link to them.
fn summary(entries: &[Entry]) -> Markup {
    let mut counts: std::collections::BTreeMap<(&str, &str, &str), usize> = Default::default();
    for e in entries {
        let l = &e.letter;
        let key = (
            l.failing_service.as_str(),
            l.classification.as_str(),
            l.event_type.as_deref().unwrap_or(""),
        );
        *counts.entry(key).or_default() += 1;
    }
    html! {
        @if counts.len() > 1 { table class="summary-counts" {
            thead { tr { th { "Service" } th { "Classification" } th { "Event" } th class="num" { "Letters" } } }
            tbody { @for ((service, class, event), n) in &counts { tr {
                td { a href={ "/dead-letters?service=" (service) "&classification=" (class) "&event_type=" (event) } { (service) } }
                td { (badge(class)) } td { (event) } td class="num" { (n) }
            } } }
        } }
    }
}

fn letter(session: &Session, e: &Entry) -> Markup {
    let l = &e.letter;
    html! {
        details class="card letter" data-position=(e.position) {
            summary {
                code { (e.position) } " "
                (badge(l.classification.as_str())) " "
                strong { (l.event_type.as_deref().unwrap_or("(no event type)")) }
                " from " (l.failing_service) " · " (time(l.failed_at))
            }
            p class="error-text" { (l.error) }
            dl class="summary" {
                dt { "Original" } dd { (l.original_topic) " " (l.original_partition) ":" (l.original_offset) }
                dt { "Event id" } dd class="id" { (l.event_id.as_deref().unwrap_or("-")) }
                @if let Some(s) = &l.sqlstate { dt { "SQLSTATE" } dd { (s) } }
                @if let Some(a) = l.attempts { dt { "Attempts" } dd { (a) } }
            }
            pre class="body" { (body_text(l.payload.as_deref(), l.payload_base64.as_deref())) }
            @if can_act(session) {
                form method="post" action="/dead-letters/replay" class="action" {
                    (csrf(session))
                    input type="hidden" name="position" value=(e.position);
                    button type="submit" { "Replay this one (dry run first)" }
                }
            }
        }
    }
}

/// A letter's body as an operator reads it: JSON indented, text as it is, bytes that are
/// neither as their base64.
fn body_text(text: Option<&str>, base64: Option<&str>) -> String {
    match (text, base64) {
        (Some(t), _) => serde_json::from_str::<serde_json::Value>(t)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| t.to_owned()),
        (None, Some(b)) => format!("(not text; base64) {b}"),
        (None, None) => "(no body)".to_owned(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ReplayForm {
    #[serde(flatten)]
    action: ActionForm,
    #[serde(flatten)]
    filter: FilterForm,
    /// `yes` sends; anything else is the dry run.
    #[serde(default)]
    confirm: String,
    /// The letters the dry run showed (`partition:offset`, comma separated): what is sent.
    #[serde(default)]
    positions: String,
}

/// `POST /dead-letters/replay`: the dry run, or with `confirm=yes` and a reason, the replay.
pub async fn replay(
    State(state): State<Console>,
    session: Session,
    Form(form): Form<ReplayForm>,
) -> Response {
    let confirmed = form.confirm == "yes";
    if let Err(refused) = form.action.admit(&session, confirmed) {
        return refused.into_response();
    }
    let entries = match matching(&state, &form.filter).await {
        Ok(e) if e.is_empty() => {
            return outcome(
                &session,
                "/dead-letters",
                Err(anyhow::anyhow!("no dead letter matches")),
            )
        }
        Ok(e) => e,
        Err(e) => return super::unavailable(e),
    };
    if !confirmed {
        return dry_run(&session, &form.filter, &entries);
    }
    // Exactly the letters the operator saw: none that arrived since the dry run.
    let shown: Vec<&str> = form
        .positions
        .split(',')
        .filter(|p| !p.is_empty())
        .collect();
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| shown.contains(&e.position.as_str()))
        .collect();
    if shown.is_empty() || entries.len() != shown.len() {
        return Refusal::new(
            StatusCode::CONFLICT,
            "dead_letters_changed",
            "The letters shown by the dry run are not all there any more: run the dry run again.",
        )
        .into_response();
    }
    let target = format!("dead letters {}", shown.join(","));
    let result = dlq::replay(&state.kafka, &entries, false);
    let act = Act {
        state: &state,
        session: &session,
        action: "dead_letters.replay",
        target: &target,
        reason: form.action.reason.trim(),
        back: "/dead-letters",
    };
    act.run(
        result,
        |n| format!("{n} replayed"),
        |n| format!("{n} dead letter(s) replayed to their original topics."),
    )
    .await
}

fn dry_run(session: &Session, f: &FilterForm, entries: &[Entry]) -> Response {
    let body = html! {
        p class="notice" data-code="dry_run" { "Dry run: nothing was sent. These " (entries.len()) " letter(s) would be replayed:" }
        table { thead { tr { th { "Position" } th { "Event" } th { "Event id" } th { "To topic" } } }
            tbody { @for e in entries { tr {
                td { code { (e.position) } }
                td { (e.letter.event_type.as_deref().unwrap_or("-")) }
                td class="id" { (e.letter.event_id.as_deref().unwrap_or("-")) }
                td { (e.letter.original_topic) }
            } } } }
        form method="post" action="/dead-letters/replay" class="action" {
            (csrf(session)) (f.hidden())
            input type="hidden" name="confirm" value="yes";
            input type="hidden" name="positions" value=(entries.iter().map(|e| e.position.as_str()).collect::<Vec<_>>().join(","));
            input type="text" name="reason" placeholder="why (recorded)" required maxlength="500";
            button type="submit" class="danger" { "Replay " (entries.len()) " letter(s)" }
        }
        p { a href="/dead-letters" { "Cancel" } }
    };
    (
        StatusCode::OK,
        page(session, "/dead-letters", "Replay dead letters", body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::body_text;

    #[test]
    fn a_letters_body_is_shown_readable() {
        assert_eq!(body_text(Some("{\"a\":1}"), None), "{\n  \"a\": 1\n}");
        assert_eq!(body_text(Some("not json"), None), "not json");
        assert_eq!(body_text(None, Some("AAE=")), "(not text; base64) AAE=");
        assert_eq!(body_text(None, None), "(no body)");
    }
}
