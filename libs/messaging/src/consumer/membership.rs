//! A client left outside its group. After a long broker outage librdkafka can lose its
//! assignment (the session expired while the coordinator was away), revoke everything, and
//! then never join again, without raising a fatal error (seen once in eight chaos runs with
//! static membership; librdkafka issue 3437 describes the same hang). Such a client polls
//! forever with nothing assigned, and the service's payments stop moving while `/ready`
//! says all is well.
//!
//! The watch: once a client has held no partition for [`ORPHAN_AFTER`], the group's
//! coordinator is asked who its members are (every [`CHECK_EVERY`], off the async runtime).
//! A client the coordinator does not list in a settled group is ended like a fatally failed
//! one and replaced (the same path, counted in `consumer_replacements_total`). A client the
//! group lists but gives nothing (more members than partitions) is left alone, and while the
//! coordinator cannot be asked, or the group is rebalancing, nothing is decided.

use crate::partitions::Tracking;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::ffi::CStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client may hold no partition before its membership is checked: longer than a
/// session (10 s) and a rebalance after it.
pub(super) const ORPHAN_AFTER: Duration = Duration::from_secs(15);
/// How often the membership of a client without partitions is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long one question to the coordinator may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the coordinator says of the group, as far as the verdict needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupView {
    pub state: String,
    pub member_ids: Vec<String>,
}

/// The verdict on a client that has held no partition for [`ORPHAN_AFTER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The group lists it: idle, not lost.
    Member,
    /// Not in the group, and the group is not waiting for it: replace the client.
    Orphaned(String),
    /// The coordinator did not answer, or the group is rebalancing: ask again later.
    Undecided,
}

/// Decides from the client's own member id (empty: it holds none) and the group's view.
pub(super) fn verdict(member_id: &str, group: Option<&GroupView>) -> Verdict {
    let Some(group) = group else {
        return Verdict::Undecided;
    };
    if !member_id.is_empty() && group.member_ids.iter().any(|m| m == member_id) {
        return Verdict::Member;
    }
    match group.state.as_str() {
        // Settled without this client: it is not joining.
        "Stable" | "Empty" | "Dead" => Verdict::Orphaned(format!(
            "no partitions for {} s and not a member of its group (group {}, member id {:?})",
            ORPHAN_AFTER.as_secs(),
            group.state,
            member_id
        )),
        _ => Verdict::Undecided,
    }
}

/// The watch over one client's membership (one per session).
pub(super) struct Watch {
    group_id: String,
    empty_since: Option<Instant>,
    last_check: Option<Instant>,
    asking: Option<tokio::task::JoinHandle<Verdict>>,
}

impl Watch {
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_owned(),
            empty_since: None,
            last_check: None,
            asking: None,
        }
    }

    /// Called on every health tick with whether the client holds any partition; returns the
    /// reason to replace the client once the coordinator says it is not a member.
    pub fn tick(
        &mut self,
        consumer: &Arc<StreamConsumer<Tracking>>,
        holds_any: bool,
    ) -> Option<String> {
        let now = Instant::now();
        if holds_any {
            *self = Self::new(&self.group_id);
            return None;
        }
        let since = *self.empty_since.get_or_insert(now);
        if let Some(asking) = &self.asking {
            if !asking.is_finished() {
                return None;
            }
            // Finished: it resolves at once (a panicked question decides nothing).
            let verdict = self.asking.take().and_then(|h| h.now_or_never()?.ok());
            if let Some(Verdict::Orphaned(reason)) = verdict {
                return Some(reason);
            }
        }
        let due = self.last_check.is_none_or(|t| now - t >= CHECK_EVERY);
        if now - since >= ORPHAN_AFTER && due {
            self.last_check = Some(now);
            let (consumer, group) = (consumer.clone(), self.group_id.clone());
            self.asking = Some(tokio::task::spawn_blocking(move || {
                verdict(&member_id(&consumer), ask(&consumer, &group).as_ref())
            }));
        }
        None
    }
}

/// The group as its coordinator describes it; `None` when it does not answer.
fn ask(consumer: &StreamConsumer<Tracking>, group: &str) -> Option<GroupView> {
    let list = consumer.fetch_group_list(Some(group), ASK_TIMEOUT).ok()?;
    let info = list.groups().iter().find(|g| g.name() == group)?;
    Some(GroupView {
        state: info.state().to_owned(),
        member_ids: info.members().iter().map(|m| m.id().to_owned()).collect(),
    })
}

/// The member id librdkafka holds for this client in its group ("" before it joined).
fn member_id(consumer: &StreamConsumer<Tracking>) -> String {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live client `consumer` owns (borrowed for this call);
    // rd_kafka_memberid returns NULL or a string allocated by librdkafka, which is copied and
    // then freed with rd_kafka_mem_free, as its documentation asks.
    unsafe {
        let raw = rdkafka::bindings::rd_kafka_memberid(rk);
        if raw.is_null() {
            return String::new();
        }
        let id = CStr::from_ptr(raw).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, raw.cast());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: &str, members: &[&str]) -> GroupView {
        GroupView {
            state: state.to_owned(),
            member_ids: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn a_member_the_group_lists_is_idle_not_lost() {
        assert_eq!(
            verdict("m-1", Some(&group("Stable", &["m-2", "m-1"]))),
            Verdict::Member
        );
    }

    #[test]
    fn a_client_a_settled_group_does_not_list_is_orphaned() {
        for state in ["Stable", "Empty", "Dead"] {
            assert!(
                matches!(
                    verdict("m-1", Some(&group(state, &["m-2"]))),
                    Verdict::Orphaned(_)
                ),
                "{state}"
            );
        }
        // Holding no member id at all while the group settled is the same.
        assert!(matches!(
            verdict("", Some(&group("Empty", &[]))),
            Verdict::Orphaned(_)
        ));
    }

    #[test]
    fn nothing_is_decided_while_the_group_rebalances_or_the_coordinator_is_away() {
        assert_eq!(verdict("m-1", None), Verdict::Undecided);
        for state in ["PreparingRebalance", "CompletingRebalance"] {
            assert_eq!(
                verdict("m-1", Some(&group(state, &["m-2"]))),
                Verdict::Undecided
            );
        }
    }
}
