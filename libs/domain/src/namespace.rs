//! One namespace prefixes every topic, consumer group and database name, so that test suites
//! run isolated (and in parallel) against one broker and one PostgreSQL server.

use crate::events::{Channel, EventType};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace must be 1-40 characters of [a-z0-9_], starting with a letter; got {0:?}")]
pub struct NamespaceError(String);

impl Namespace {
    pub const DEFAULT: &'static str = "sagapay";
    const MAX_LEN: usize = 40;

    pub fn parse(raw: &str) -> Result<Self, NamespaceError> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NamespaceError(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Kafka topic an event type travels on: its channel's (`<namespace>.<channel>`).
    /// A type the catalog does not know has no topic of its own: `<namespace>.<event_type>`,
    /// which nothing creates.
    pub fn topic(&self, event_type: &str) -> String {
        match EventType::parse(event_type) {
            Some(t) => self.channel_topic(t.channel()),
            None => format!("{}.{}", self.0, event_type),
        }
    }

    /// The topic of a channel: `<namespace>.<channel>`.
    pub fn channel_topic(&self, channel: Channel) -> String {
        format!("{}.{}", self.0, channel.as_str())
    }

    /// Every topic of the namespace: its channels and its dead-letter topic.
    pub fn all_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = Channel::ALL
            .iter()
            .map(|c| self.channel_topic(*c))
            .collect();
        topics.push(self.dead_letter_topic());
        topics
    }

    /// Consumer group of a service: `<namespace>.<service>`.
    pub fn consumer_group(&self, service: &str) -> String {
        format!("{}.{}", self.0, service)
    }

    /// PostgreSQL database of a service: `<namespace>_<service>` with `-` mapped to `_`.
    pub fn database(&self, service: &str) -> String {
        format!("{}_{}", self.0, service.replace('-', "_"))
    }

    /// The dead-letter topic shared by all services of this namespace.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.deadletter", self.0)
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_namespace() {
        let ns = Namespace::parse("t_42").unwrap();
        assert_eq!(ns.topic("payments.requested"), "t_42.risk");
        assert_eq!(ns.topic("payments.captured"), "t_42.orchestrator");
        assert_eq!(ns.dead_letter_topic(), "t_42.deadletter");
        assert_eq!(ns.consumer_group("risk"), "t_42.risk");
        assert_eq!(ns.database("provider-adapter"), "t_42_provider_adapter");
    }

    #[test]
    fn hostile_namespaces_are_refused() {
        for bad in ["", "1abc", "Abc", "a-b", "a;drop", &"a".repeat(41)] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
