//! Deliberate bugs, for measuring the simulator's power (`crate::simulation`): in the
//! orchestrator's own tests a test switches one on for its thread and checks that the
//! simulation fails, by the invariant the bug is about. Each is a change of the saga's
//! production code (a hook here, tested where the code decides), never of the simulator's
//! models: a bug the models could have is not a bug the platform can have. In any other
//! build [`active`] is `false` and compiles away.

/// A bug the simulator must find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A merchant refund is bounded by the authorized amount, not by what was captured.
    RefundBoundByAuthorized,
    /// A deadline of a settled payment sends its capture again.
    DeadlineRecapturesSettled,
    /// The saga applies a reversal whatever amount it reports: a provider that paid back
    /// less than the capture leaves the payment REVERSED with money held.
    ReversalAmountUnchecked,
    /// A posting that arrives after its capture was refunded is ignored as stale (the bug
    /// the simulator found first: the ledger kept money the provider had paid back).
    LatePostingKept,
    /// A manual payment nobody captured in time is canceled without voiding its
    /// authorization: the hold stays on the customer's card.
    ExpiryWithoutVoid,
    /// The ledger's answer to a refund's posting repeated (a posting sent again after its
    /// deadline or an operator's retry) announces the refund to its merchant again.
    RefundAnnouncedAgain,
    /// A payment flagged for an operator keeps its place in admission control (the bug that
    /// locked every merchant out once enough payments were parked).
    ParkedHoldsPlace,
    /// A merchant refund the provider declined is kept as if its outcome were unknown: it
    /// stays REQUESTED, holds its amount and is never announced.
    DeclinedRefundPending,
}

#[cfg(test)]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Whether `m` is switched on (on this thread).
#[cfg(test)]
pub fn active(m: Mutation) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}

#[cfg(not(test))]
#[inline(always)]
pub fn active(_: Mutation) -> bool {
    false
}

/// Switches `m` on for this thread (`None`: off).
#[cfg(test)]
pub fn set(m: Option<Mutation>) {
    ACTIVE.with(|a| a.set(m));
}
