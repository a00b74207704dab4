//! Who may do what on the broker: the Kafka ACLs that follow from what each service declares
//! it consumes and produces. A service's principal (`User:<service>`) may write only to the
//! channels its events go to and to the dead-letter topic, and read only the channels it
//! consumes, as its own consumer groups. So a forged `payments.settled` can come only from
//! the ledger's credentials: the gateway's or the notification service's cannot write to the
//! orchestrator's channel at all.
//!
//! The grants are computed (pure, [`service_grants`], [`operator_grants`]) and then applied
//! with librdkafka's CreateAcls ([`apply`]), by a principal the broker lists as a super user.
//! rust-rdkafka wraps no ACL call, so [`apply`] uses librdkafka's C API directly (rdkafka-sys);
//! the only other way, Kafka's own `kafka-acls` tool, starts a JVM per principal.

use crate::KafkaSettings;
use rdkafka::bindings as rd;
use sagapay_domain::{Channel, EventType, Namespace};
use std::ffi::{CStr, CString};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Topic,
    Group,
}

/// How a grant's name matches: the whole name, or every name that begins with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    Literal,
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Write,
    Create,
    Describe,
}

/// One ACL: `principal` is allowed `operation` on `resource` named (or prefixed) `name`,
/// from any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub principal: String,
    pub resource: Resource,
    pub pattern: Pattern,
    pub name: String,
    pub operation: Operation,
}

/// The Kafka principal of a service (the SASL user name it connects as).
pub fn principal(user: &str) -> String {
    format!("User:{user}")
}

/// The grants of `service`, which consumes `consumes` and produces `produces` in `ns`:
/// - write (and describe, create) on each channel it produces to, and on the dead-letter
///   topic when it consumes anything (a consumer's poison goes there);
/// - read (and describe, create) on each channel it consumes;
/// - read on its consumer groups: `<ns>.<service>` and `<ns>.<service>.<channel>`.
///
/// Create is allowed on these topics only, so a service can start on a fresh namespace (it
/// creates its topics when absent) and can create no other.
pub fn service_grants(
    ns: &Namespace,
    service: &str,
    consumes: &[EventType],
    produces: &[EventType],
) -> Vec<Grant> {
    let who = principal(service);
    let grant = |resource, pattern, name: &str, operation| Grant {
        principal: who.clone(),
        resource,
        pattern,
        name: name.to_owned(),
        operation,
    };
    let topics = |events: &[EventType]| -> Vec<String> {
        let mut channels: Vec<Channel> = events.iter().map(|e| e.channel()).collect();
        channels.sort();
        channels.dedup();
        channels.into_iter().map(|c| ns.channel_topic(c)).collect()
    };
    let mut written = topics(produces);
    if !consumes.is_empty() {
        written.push(ns.dead_letter_topic());
    }
    let mut grants = Vec::new();
    for (topics, operation) in [
        (written, Operation::Write),
        (topics(consumes), Operation::Read),
    ] {
        for topic in topics {
            for op in [operation, Operation::Describe, Operation::Create] {
                grants.push(grant(Resource::Topic, Pattern::Literal, &topic, op));
            }
        }
    }
    if !consumes.is_empty() {
        let group = ns.consumer_group(service);
        grants.push(grant(
            Resource::Group,
            Pattern::Literal,
            &group,
            Operation::Read,
        ));
        let streams = format!("{group}.");
        grants.push(grant(
            Resource::Group,
            Pattern::Prefixed,
            &streams,
            Operation::Read,
        ));
    }
    grants.sort();
    grants.dedup();
    grants
}

/// The grants of the operators' tool (`sagapayctl`, as `user`): read the dead-letter topic
/// (in groups of its own, `<ns>.sagapayctl.`), and write every channel, to replay a dead
/// letter to the topic it came from.
pub fn operator_grants(ns: &Namespace, user: &str) -> Vec<Grant> {
    let who = principal(user);
    let grant = |resource, pattern, name: String, operation| Grant {
        principal: who.clone(),
        resource,
        pattern,
        name,
        operation,
    };
    let dead_letters = ns.dead_letter_topic();
    let mut grants = vec![
        grant(
            Resource::Topic,
            Pattern::Literal,
            dead_letters.clone(),
            Operation::Read,
        ),
        grant(
            Resource::Topic,
            Pattern::Literal,
            dead_letters,
            Operation::Describe,
        ),
        grant(
            Resource::Group,
            Pattern::Prefixed,
            format!("{}.", ns.consumer_group("sagapayctl")),
            Operation::Read,
        ),
    ];
    for channel in Channel::ALL {
        for op in [Operation::Write, Operation::Describe] {
            grants.push(grant(
                Resource::Topic,
                Pattern::Literal,
                ns.channel_topic(channel),
                op,
            ));
        }
    }
    grants.sort();
    grants
}

impl fmt::Display for Grant {
    /// `User:risk ALLOW Write on Topic sagapay.orchestrator (literal)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ALLOW {:?} on {:?} {} ({})",
            self.principal,
            self.operation,
            self.resource,
            self.name,
            match self.pattern {
                Pattern::Literal => "literal",
                Pattern::Prefixed => "prefixed",
            }
        )
    }
}

/// Creates `grants` on the cluster `kafka` points at (its credentials must be a super user's
/// or hold Alter on the cluster). Creating a grant that exists is not an error.
pub async fn apply(kafka: &KafkaSettings, grants: &[Grant]) -> anyhow::Result<()> {
    if grants.is_empty() {
        return Ok(());
    }
    let admin = kafka.admin()?;
    let grants = grants.to_vec();
    tokio::task::spawn_blocking(move || create_acls(admin.inner().native_ptr(), &grants)).await?
}

/// librdkafka's CreateAcls, waited for on a queue of its own (at most 30 s).
fn create_acls(rk: *mut rd::rd_kafka_t, grants: &[Grant]) -> anyhow::Result<()> {
    let mut bindings = Bindings(Vec::with_capacity(grants.len()));
    for g in grants {
        bindings.0.push(binding(g)?);
    }
    // SAFETY: `rk` is a live client for the whole call (the caller owns it); every pointer
    // passed is live until its destroy call below; the event is read before it is destroyed.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
        );
        let mut errstr = [0 as std::ffi::c_char; 512];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            30_000,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        rd::rd_kafka_CreateAcls(
            rk,
            bindings.0.as_mut_ptr(),
            bindings.0.len(),
            options,
            queue,
        );
        let event = rd::rd_kafka_queue_poll(queue, 35_000);
        let outcome = if event.is_null() {
            Err(anyhow::anyhow!("no answer to CreateAcls within 35 s"))
        } else {
            let outcome = acl_results(event, grants);
            rd::rd_kafka_event_destroy(event);
            outcome
        };
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_queue_destroy(queue);
        outcome
    }
}

/// The outcome of a CreateAcls result event: the request's error, or the first grant's.
///
/// # Safety
/// `event` must be a live CreateAcls result event for `grants`, in their order.
unsafe fn acl_results(event: *mut rd::rd_kafka_event_t, grants: &[Grant]) -> anyhow::Result<()> {
    let code = rd::rd_kafka_event_error(event);
    if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let reason = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy();
        anyhow::bail!("CreateAcls failed: {reason}");
    }
    let result = rd::rd_kafka_event_CreateAcls_result(event);
    anyhow::ensure!(!result.is_null(), "not a CreateAcls result");
    let mut count = 0usize;
    let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
    for i in 0..count {
        let error = rd::rd_kafka_acl_result_error(*results.add(i));
        if !error.is_null() {
            let reason = CStr::from_ptr(rd::rd_kafka_error_string(error)).to_string_lossy();
            let grant = grants.get(i).map(|g| g.to_string()).unwrap_or_default();
            anyhow::bail!("creating the ACL {grant}: {reason}");
        }
    }
    Ok(())
}

/// Owns the bindings passed to CreateAcls (librdkafka copies them).
struct Bindings(Vec<*mut rd::rd_kafka_AclBinding_t>);

impl Drop for Bindings {
    fn drop(&mut self) {
        // SAFETY: each pointer came from rd_kafka_AclBinding_new and is destroyed once.
        unsafe { rd::rd_kafka_AclBinding_destroy_array(self.0.as_mut_ptr(), self.0.len()) }
    }
}

fn binding(g: &Grant) -> anyhow::Result<*mut rd::rd_kafka_AclBinding_t> {
    use rd::rd_kafka_AclOperation_t as Op;
    use rd::rd_kafka_ResourcePatternType_t as Pat;
    use rd::rd_kafka_ResourceType_t as Res;
    let resource = match g.resource {
        Resource::Topic => Res::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => Res::RD_KAFKA_RESOURCE_GROUP,
    };
    let pattern = match g.pattern {
        Pattern::Literal => Pat::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => Pat::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    };
    let operation = match g.operation {
        Operation::Read => Op::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => Op::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Create => Op::RD_KAFKA_ACL_OPERATION_CREATE,
        Operation::Describe => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
    };
    let (name, principal, host) = (
        CString::new(g.name.as_str())?,
        CString::new(g.principal.as_str())?,
        CString::new("*")?,
    );
    let mut errstr = [0 as std::ffi::c_char; 512];
    // SAFETY: the strings outlive the call (librdkafka copies them); errstr's size is given.
    let binding = unsafe {
        rd::rd_kafka_AclBinding_new(
            resource,
            name.as_ptr(),
            pattern,
            principal.as_ptr(),
            host.as_ptr(),
            operation,
            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if binding.is_null() {
        // SAFETY: librdkafka wrote a NUL-terminated message into errstr.
        let reason = unsafe { CStr::from_ptr(errstr.as_ptr()) }.to_string_lossy();
        anyhow::bail!("the ACL {g}: {reason}");
    }
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace::parse("shop").unwrap()
    }

    fn has(grants: &[Grant], op: Operation, resource: Resource, name: &str) -> bool {
        grants
            .iter()
            .any(|g| g.operation == op && g.resource == resource && g.name == name)
    }

    #[test]
    fn a_service_writes_where_its_events_go_and_reads_its_own_channel() {
        let grants = service_grants(
            &ns(),
            "risk",
            &[EventType::PaymentRequested, EventType::PaymentFinalized],
            &[EventType::RiskApproved, EventType::RiskDenied],
        );
        assert!(grants.iter().all(|g| g.principal == "User:risk"));
        assert!(has(
            &grants,
            Operation::Write,
            Resource::Topic,
            "shop.orchestrator"
        ));
        assert!(has(
            &grants,
            Operation::Write,
            Resource::Topic,
            "shop.deadletter"
        ));
        assert!(has(&grants, Operation::Read, Resource::Topic, "shop.risk"));
        assert!(has(
            &grants,
            Operation::Read,
            Resource::Topic,
            "shop.payments"
        ));
        assert!(!has(
            &grants,
            Operation::Write,
            Resource::Topic,
            "shop.risk"
        ));
        assert!(!has(
            &grants,
            Operation::Write,
            Resource::Topic,
            "shop.provider"
        ));
        assert!(!has(
            &grants,
            Operation::Read,
            Resource::Topic,
            "shop.orchestrator"
        ));
        assert!(has(&grants, Operation::Read, Resource::Group, "shop.risk"));
        assert!(grants.iter().any(|g| g.resource == Resource::Group
            && g.pattern == Pattern::Prefixed
            && g.name == "shop.risk."));
    }

    #[test]
    fn a_service_that_produces_nothing_writes_only_dead_letters() {
        let grants = service_grants(&ns(), "notification", &[EventType::PaymentFinalized], &[]);
        let written: Vec<&str> = grants
            .iter()
            .filter(|g| g.operation == Operation::Write)
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(written, ["shop.deadletter"]);
    }

    #[test]
    fn a_service_that_neither_consumes_nor_produces_may_do_nothing() {
        assert_eq!(service_grants(&ns(), "gateway", &[], &[]), vec![]);
    }

    #[test]
    fn the_operator_reads_dead_letters_and_replays_to_every_channel() {
        let grants = operator_grants(&ns(), "sagapayctl");
        assert!(has(
            &grants,
            Operation::Read,
            Resource::Topic,
            "shop.deadletter"
        ));
        for c in Channel::ALL {
            assert!(has(
                &grants,
                Operation::Write,
                Resource::Topic,
                &format!("shop.{}", c.as_str())
            ));
        }
        assert!(!grants
            .iter()
            .any(|g| g.operation == Operation::Read && g.name.starts_with("shop.orchestrator")));
    }
}
