//! The deterministic simulator: seeded, single-threaded, no I/O. It runs the saga's real
//! core ([`crate::saga::decide::decide`], applied with [`crate::saga::apply::apply`]) and
//! every decision of the provider adapter through the adapter's own functions
//! (`sagapay_provider_adapter::policy`, `sagapay_provider_adapter::replies`; see `adapter`)
//! against models of risk, the adapter's operations, the payment provider (which refuses
//! what a PSP refuses, and declines and pays back short of its own accord), the ledger and
//! notification (whose rows can hold a second posting or announcement, behind their own
//! inboxes), connected by a network that delays, reorders (across payments, and between an
//! adapter's two relays), duplicates and redelivers messages and parks some as dead
//! letters, with crashes that lose what was not committed. Merchants and operators act at
//! random moments. The invariants ([`invariants`], each named) are checked after every step
//! and once the faults stop and everything settles.
//!
//! A failing seed prints itself, the invariant it broke and the trace of steps that led
//! there; `scripts/simulate.sh --seed S` replays it exactly, `--seeds N` runs many.
//!
//! What the models leave out is listed in `docs/architecture.md` ("The simulator").

mod adapter;
pub mod invariants;
mod models;
mod run;
mod verdict;
mod world;

#[cfg(test)]
mod tests;

pub use world::World;

/// A small deterministic generator (splitmix64): the only source of chance in a run.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Config {
    /// Payments created while faults happen.
    pub payments: usize,
    /// Steps with faults, new payments and merchants' and operators' actions.
    pub fault_steps: usize,
    /// Steps allowed for everything to settle afterwards.
    pub settle_steps: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            payments: 8,
            fault_steps: 400,
            settle_steps: 20_000,
        }
    }
}

/// A run that broke an invariant: the seed, what broke, and how it got there.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub step: usize,
    /// The rule that broke.
    pub invariant: invariants::Invariant,
    pub violation: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: [{:?}] {}",
            self.seed, self.step, self.invariant, self.violation
        )?;
        writeln!(
            f,
            "replay: scripts/simulate.sh --seed {} (the last {} steps follow)",
            self.seed,
            self.trace.len().min(400)
        )?;
        let from = self.trace.len().saturating_sub(400);
        for line in &self.trace[from..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a run that passed did (for the seeds-per-second and coverage report).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub steps: usize,
    pub delivered: usize,
    pub decisions: usize,
    pub terminal: usize,
    pub flagged: usize,
    /// New payments refused because their merchant held its share of admission.
    pub refused: usize,
    /// Payments parked for an operator that an operator ended once the faults stopped.
    pub ended_by_operators: usize,
    /// Payments whose reversal the provider performed for another amount, left parked.
    pub left_to_reconcile: usize,
    /// Payments FAILED with their authorization open because the provider refused the void.
    pub holds_lapsed: usize,
    /// Redeliveries the ledger's and notification's inboxes stopped.
    pub redeliveries_skipped: u64,
    /// Posting requests the ledger answered with a posting it had made (its unique key).
    pub posted_again: u64,
}

/// Runs seed `seed`.
pub fn run(seed: u64, config: &Config) -> Result<Summary, Box<Failure>> {
    World::new(seed, config.clone()).run()
}
