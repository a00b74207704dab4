//! What operators do, once, for every tool that does it: `sagapayctl` on a terminal and the
//! console in a browser call the same functions, so a rule (who may fail a payment, what a
//! replay sends) cannot differ between them.
//!
//! One module a job: [`dlq`] reads and replays dead letters (Kafka), [`payments`] calls the
//! orchestrator's and risk's ops routes (stuck payments, retries, fails, reviews, merchants'
//! shares), [`reviews`] risk's review queue, [`reconcile`] compares the provider, the payments and the ledger (their
//! databases, read only).

pub mod dlq;
pub mod payments;
pub mod reconcile;
pub mod reviews;
