//! The operator's tool. `dlq` reads the namespace's dead-letter topic and replays dead letters
//! to their original topic, byte for byte (so with their original `event_id`): a replayed
//! event that was already processed is skipped by the consumer's inbox and changes nothing.
//! `payments` lists, retries and fails payments that stopped moving (the orchestrator's ops
//! routes); `reconcile` compares the provider, the orchestrator and the ledger.
//!
//! Those three are `sagapay-operations`, shared with the console (one implementation of each
//! action); this crate adds what only the command line does (`acls`).

pub use sagapay_operations::{dlq, payments, reconcile};

pub mod acls;
