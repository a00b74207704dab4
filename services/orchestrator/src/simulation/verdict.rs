//! What a check of the simulated world says: the rule ([`Invariant`], each with a name) and,
//! when it broke, how ([`Violation`]). The world records breaches by rule as it runs; the
//! rules themselves (`invariants`) read the world.

/// The rules, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// Every decision applies (its moves in the transition table) and the saga refuses
    /// nothing as broken.
    DecisionsApply,
    /// Nothing but its refunds' work is sent for a payment that ended.
    NothingSentAfterEnd,
    /// The provider is never asked what it refuses (its refusal is a bug of ours it caught).
    ProviderNeverRefuses,
    /// At the provider: captured ≤ authorized, refunded ≤ captured, at most one capture.
    ProviderBooksHold,
    /// Admission's count of each merchant equals a recount by its rule.
    AdmissionFollows,
    /// The ledger posts a capture only as the provider captured it, for what it captured.
    LedgerPostsWhatWasCaptured,
    /// Postings per payment: at most one of the capture, one per refund; and each message a
    /// service acted on, it acted on once (its inbox). Counted at rest: a row stays.
    PostedOnce,
    /// At rest: no message in flight, no operation pending, and every payment ended or
    /// parked for an operator.
    Settles,
    /// One `payments.finalized` per terminal state a payment reached, none otherwise; at
    /// most one `payments.awaiting_capture`.
    FinalizedOnce,
    /// Each refund that succeeded announced once as succeeded, each that failed once as
    /// failed, and nothing else announced.
    RefundAnnouncedOnce,
    /// What a payment's state says the provider did, it did: the capture it holds, its
    /// authorization, each refund it counts as made (and none it counts as failed).
    StateMatchesProvider,
    /// Every ledger posting is backed: a refund's by the provider's refund of that amount,
    /// the reversal of a capture posting by that posting.
    LedgerPostingsMatchProvider,
    /// What the provider holds is what the status says: the capture less the succeeded
    /// refunds when settled or refunded, nothing when failed, reversed or canceled.
    StatusMatchesProvider,
    /// The ledger holds what the provider holds.
    LedgerMatchesProvider,
    /// A payment that ended without its capture left no authorization open at the provider
    /// (unless the provider refused to void it: the hold then lapses at the card's issuer).
    NoOpenAuthorization,
    /// Once operators ended every parked payment, every payment ended (but one whose
    /// reversal the provider performed for another amount: reconciled by hand).
    OperatorsEndParked,
    /// A refund the provider declined is FAILED.
    DeclinedRefundFails,
}

/// A rule broken, and how.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}] {}", self.invariant, self.detail)
    }
}

pub type Checked = Result<(), Violation>;
