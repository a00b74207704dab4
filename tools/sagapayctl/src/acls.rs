//! The Kafka ACLs of a namespace, from what each service declares it consumes and produces
//! (`sagapay_messaging::acl` says what each declaration grants), and the operators' tool's.
//! `sagapayctl kafka acls` prints them and, with `--apply`, creates them.

use sagapay_domain::{EventType, Namespace};
use sagapay_messaging::acl::{self, Grant};

/// Each service (its Kafka user name is its name) with what it consumes and produces.
pub const DECLARATIONS: [(&str, &[EventType], &[EventType]); 6] = [
    ("gateway", &[], &[]),
    (
        "orchestrator",
        sagapay_orchestrator::CONSUMES,
        sagapay_orchestrator::PRODUCES,
    ),
    ("risk", sagapay_risk::CONSUMES, sagapay_risk::PRODUCES),
    (
        "provider-adapter",
        sagapay_provider_adapter::CONSUMES,
        sagapay_provider_adapter::PRODUCES,
    ),
    ("ledger", sagapay_ledger::CONSUMES, sagapay_ledger::PRODUCES),
    ("notification", sagapay_notification::CONSUMES, &[]),
];

/// Every grant of the namespace: each service's, and `operator`'s (the user `sagapayctl`
/// connects as to read and replay dead letters).
pub fn grants(ns: &Namespace, operator: &str) -> Vec<Grant> {
    let mut grants: Vec<Grant> = DECLARATIONS
        .iter()
        .flat_map(|(service, consumes, produces)| {
            acl::service_grants(ns, service, consumes, produces)
        })
        .collect();
    grants.extend(acl::operator_grants(ns, operator));
    grants
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_messaging::acl::{Operation, Resource};

    #[test]
    fn every_service_is_declared_once() {
        let declared: Vec<&str> = DECLARATIONS.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(declared, sagapay_service_kit::SERVICES);
    }

    /// Only the services whose events go there may write to the orchestrator's channel.
    #[test]
    fn the_orchestrators_channel_is_written_by_its_answerers_and_the_operator_only() {
        let ns = Namespace::parse("shop").unwrap();
        let mut writers: Vec<String> = grants(&ns, "sagapayctl")
            .into_iter()
            .filter(|g| {
                g.resource == Resource::Topic
                    && g.operation == Operation::Write
                    && g.name == "shop.orchestrator"
            })
            .map(|g| g.principal)
            .collect();
        writers.sort();
        assert_eq!(
            writers,
            [
                "User:ledger",
                "User:provider-adapter",
                "User:risk",
                "User:sagapayctl"
            ]
        );
    }
}
