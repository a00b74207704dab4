//! Deliberate bugs, for measuring the simulator's power (`crate::simulation`): in the
//! orchestrator's own tests a test switches one on for its thread and checks that the
//! simulation fails. In any other build [`active`] is `false` and compiles away.

/// A bug the simulator must find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A merchant refund is bounded by the authorized amount, not by what was captured.
    RefundBoundByAuthorized,
    /// A deadline of a settled payment sends its capture again.
    DeadlineRecapturesSettled,
    /// The saga applies a reversal whatever amount it reports (the check before the fix of
    /// the over-refund of a partial capture).
    ReversalAmountUnchecked,
    /// A posting that arrives after its capture was refunded is ignored as stale (the bug
    /// the simulator found first: the ledger kept money the provider had paid back).
    LatePostingKept,
    /// The adapter (its model in the simulator) voids while a capture is still pending.
    VoidIgnoresPendingCapture,
    /// The revision before the over-refund's fix: the adapter turned a void after a capture
    /// into a refund of the authorized amount, and the saga did not check the amount.
    OverRefundBeforeFix,
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
