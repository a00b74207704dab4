//! Models of risk, the ledger and notification: each answers a command the way its service
//! does, idempotently (the same command again gets the same answer).

use super::Dice;
use crate::saga::consumed::Event;
use crate::saga::decision::Command;
use sagapay_domain::events::{
    LedgerPostFailed, PaymentSettled, RefundPosted, RiskApproved, RiskDenied, RiskReviewRequired,
};
use sagapay_domain::{AmountMinor, PaymentStatus};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Review,
    Deny,
}

/// Risk: one verdict per payment, decided the first time it is asked; a review is decided
/// by a person later (approve or deny).
#[derive(Debug, Default)]
pub struct Risk {
    pub verdicts: BTreeMap<Uuid, Verdict>,
    pub in_review: BTreeSet<Uuid>,
}

impl Risk {
    pub fn assess(&mut self, payment: Uuid, dice: &mut Dice) -> Event {
        let roll = dice.below(100);
        let verdict = *self.verdicts.entry(payment).or_insert(match roll {
            0..=6 => Verdict::Deny,
            7..=14 => Verdict::Review,
            _ => Verdict::Approve,
        });
        match verdict {
            Verdict::Approve => Event::RiskApproved(RiskApproved {
                reason: "score low".into(),
            }),
            Verdict::Deny => Event::RiskDenied(RiskDenied {
                reason: "score high".into(),
            }),
            Verdict::Review => {
                self.in_review.insert(payment);
                Event::RiskReviewRequired(RiskReviewRequired {
                    reason: "score medium".into(),
                })
            }
        }
    }

    /// A person decides a review.
    pub fn review(&mut self, payment: Uuid, approve: bool) -> Option<Event> {
        if !self.in_review.remove(&payment) {
            return None;
        }
        let verdict = if approve {
            Verdict::Approve
        } else {
            Verdict::Deny
        };
        self.verdicts.insert(payment, verdict);
        Some(match verdict {
            Verdict::Approve => Event::RiskApproved(RiskApproved {
                reason: "approved by a reviewer".into(),
            }),
            _ => Event::RiskDenied(RiskDenied {
                reason: "denied by a reviewer".into(),
            }),
        })
    }
}

/// The ledger's books for one payment.
#[derive(Debug, Default, Clone)]
pub struct Posted {
    /// The capture's posting: its id and amount.
    pub capture: Option<(String, AmountMinor, Uuid)>,
    /// The posting was refused (decided once).
    pub refused: Option<bool>,
    /// Refund postings (merchant refunds and the reversal of a capture), by refund id.
    pub refunds: BTreeMap<Uuid, (AmountMinor, Uuid)>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub books: BTreeMap<Uuid, Posted>,
}

impl Ledger {
    /// A posting request; `refuse_percent`: how often a first posting is refused.
    pub fn post(
        &mut self,
        payment: Uuid,
        command: &Command,
        dice: &mut Dice,
        refuse_percent: u64,
    ) -> Event {
        let books = self.books.entry(payment).or_default();
        match command {
            Command::Post(p) => {
                if let Some((_, amount, journal)) = &books.capture {
                    return settled(*journal, *amount);
                }
                let refused = *books
                    .refused
                    .get_or_insert_with(|| dice.chance(refuse_percent));
                if refused {
                    return Event::LedgerPostFailed(LedgerPostFailed {
                        reason: "account closed".into(),
                    });
                }
                let journal = Uuid::from_u64_pair(dice.next(), dice.next());
                books.capture = Some((p.capture_id.clone(), p.amount_minor, journal));
                settled(journal, p.amount_minor)
            }
            Command::PostRefund(r) => {
                let (amount, journal) = *books.refunds.entry(r.refund_id).or_insert_with(|| {
                    (
                        r.amount_minor,
                        Uuid::from_u64_pair(dice.next(), dice.next()),
                    )
                });
                Event::RefundPosted(RefundPosted {
                    refund_id: r.refund_id,
                    journal_transaction_id: journal,
                    amount_minor: amount,
                    currency: usd(),
                })
            }
            other => unreachable!("the ledger does not handle {other:?}"),
        }
    }
}

fn usd() -> sagapay_domain::Currency {
    sagapay_domain::Currency::parse("USD").expect("USD")
}

fn settled(journal: Uuid, amount: AmountMinor) -> Event {
    Event::PaymentSettled(PaymentSettled {
        journal_transaction_id: journal,
        amount_minor: amount,
        currency: usd(),
    })
}

/// Notification: the merchant's events, once per event id (its inbox).
#[derive(Debug, Default)]
pub struct Notification {
    /// Each payment's `payments.finalized` events received: message id and status.
    pub finalized: BTreeMap<Uuid, BTreeMap<u64, PaymentStatus>>,
    pub refunds_succeeded: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// `refunds.failed` announcements received per refund (each message once: the inbox
    /// drops a redelivery, so two here are two announcements).
    pub refunds_failed: BTreeMap<Uuid, u32>,
}

impl Notification {
    pub fn receive(&mut self, payment: Uuid, message: u64, command: &Command) {
        match command {
            Command::Finalized(f) => {
                self.finalized
                    .entry(payment)
                    .or_default()
                    .insert(message, f.status);
            }
            Command::RefundSucceeded(r) => {
                self.refunds_succeeded
                    .entry(payment)
                    .or_default()
                    .insert(r.refund_id);
            }
            Command::RefundFailed(r) => *self.refunds_failed.entry(r.refund_id).or_insert(0) += 1,
            _ => {}
        }
    }
}
