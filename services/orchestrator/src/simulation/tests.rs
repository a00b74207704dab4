//! The simulator in the test suite: a fixed number of seeds on every run, each deliberate
//! bug found within them, and a replay of any seed (`scripts/simulate.sh`).

use super::invariants::Invariant;
use super::{run, Config};
use crate::saga::decide::mutation::{self, Mutation};
use std::time::Instant;

/// Seeds every test run explores (`SIM_SEEDS` changes it; `scripts/simulate.sh`).
const CI_SEEDS: u64 = 2000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seeds` seeds from `first`; the first failure, with its trace, or how many passed.
fn explore(first: u64, seeds: u64) -> Result<u64, Box<super::Failure>> {
    let config = Config::default();
    for seed in first..first + seeds {
        run(seed, &config)?;
    }
    Ok(seeds)
}

/// The seeds of the suite (or `SIM_SEED` alone, or `SIM_SEEDS` from
/// `SIM_FIRST`): every invariant holds in each.
#[test]
fn every_seed_keeps_every_invariant() {
    let (first, seeds) = match env_u64("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("SIM_FIRST").unwrap_or(1),
            env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS),
        ),
    };
    let started = Instant::now();
    let mut total = super::Summary::default();
    let config = Config::default();
    for seed in first..first + seeds {
        match run(seed, &config) {
            Ok(s) => add(&mut total, &s),
            Err(failure) => panic!("{failure}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "simulation: {seeds} seeds from {first} in {elapsed:.1} s ({:.0} seeds/s), {} steps, \
         {} decisions of the saga; {} payments refused at their merchant's share, {} parked \
         at rest, {} ended by operators, {} left to reconcile by hand, {} failed with the \
         void refused; {} redeliveries stopped by the ledger's and notification's inboxes, {} \
         postings answered from the ledger's unique key",
        seeds as f64 / elapsed,
        total.steps,
        total.decisions,
        total.refused,
        total.flagged,
        total.ended_by_operators,
        total.left_to_reconcile,
        total.holds_lapsed,
        total.redeliveries_skipped,
        total.posted_again
    );
    // The suite's seeds reach what the invariants are about (not vacuously true).
    if seeds >= CI_SEEDS {
        assert!(total.refused > 0, "no seed refused a payment at its share");
        assert!(total.ended_by_operators > 0, "no seed parked a payment");
        assert!(total.left_to_reconcile > 0, "no reversal of another amount");
        assert!(
            total.holds_lapsed > 0,
            "no payment failed with its void refused"
        );
        assert!(
            total.redeliveries_skipped > 0,
            "no redelivery reached an inbox"
        );
        assert!(total.posted_again > 0, "no posting asked twice");
    }
}

fn add(total: &mut super::Summary, s: &super::Summary) {
    total.decisions += s.decisions;
    total.steps += s.steps;
    total.refused += s.refused;
    total.ended_by_operators += s.ended_by_operators;
    total.flagged += s.flagged;
    total.left_to_reconcile += s.left_to_reconcile;
    total.holds_lapsed += s.holds_lapsed;
    total.redeliveries_skipped += s.redeliveries_skipped;
    total.posted_again += s.posted_again;
}

/// Each deliberate bug (a change of the saga's production code, `mutation.rs`) makes the
/// simulation fail within the suite's seeds, and by the invariant it is about (a failure for
/// another reason would not show the simulator's power): the simulator's power, measured on
/// every run.
#[test]
fn every_deliberate_bug_is_found_within_the_suite_seeds() {
    use Invariant::*;
    let bugs = [
        (Mutation::RefundBoundByAuthorized, ProviderNeverRefuses),
        (Mutation::DeadlineRecapturesSettled, NothingSentAfterEnd),
        (Mutation::ReversalAmountUnchecked, StatusMatchesProvider),
        (Mutation::LatePostingKept, LedgerMatchesProvider),
        (Mutation::ExpiryWithoutVoid, NoOpenAuthorization),
        (Mutation::RefundAnnouncedAgain, RefundAnnouncedOnce),
        (Mutation::ParkedHoldsPlace, AdmissionFollows),
        (Mutation::DeclinedRefundPending, DeclinedRefundFails),
    ];
    for (m, caught_by) in bugs {
        mutation::set(Some(m));
        let found = explore(1, CI_SEEDS);
        mutation::set(None);
        match found {
            Ok(n) => panic!("{m:?} survived {n} seeds: the simulator lost its power"),
            Err(failure) => {
                eprintln!(
                    "simulation: {m:?} found by seed {} at step {}: [{:?}] {}",
                    failure.seed, failure.step, failure.invariant, failure.violation
                );
                assert_eq!(
                    failure.invariant, caught_by,
                    "{m:?} was caught by another invariant than its own: {}",
                    failure.violation
                );
            }
        }
    }
}

/// A run is a function of its seed: the same seed, the same trace.
#[test]
fn a_seed_replays_exactly() {
    let config = Config::default();
    let once = super::World::new(7, config.clone());
    let twice = super::World::new(7, config);
    let (a, b) = (once.run(), twice.run());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
