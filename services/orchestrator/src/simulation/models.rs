//! Models of risk, the ledger and notification, and of the inbox every service reads
//! through: each answers a command the way its service does.
//!
//! The ledger and notification record what they did as the services' tables do, one row per
//! act, with nothing that collapses a second act into the first: a posting is refused a
//! second time only by the ledger's own rule (one posting per payment and kind, its unique
//! key), and the merchant hears of every message that passes the inbox (one merchant event
//! per event id, as `merchant_events`). A message delivered again (a consumer that crashed
//! before committing) reaches the service, and only its [`Inbox`] stops it; so a saga that
//! announces or posts twice, or an inbox that lets a redelivery through, shows as two rows,
//! which the invariants count per payment.

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

/// A service's inbox (`sagapay_messaging`'s): a message acts once, by its id; every delivery
/// is counted.
#[derive(Debug, Default)]
pub struct Inbox {
    seen: BTreeSet<u64>,
    /// Deliveries, the skipped ones included.
    pub deliveries: u64,
}

impl Inbox {
    /// Whether message `id` acts now (its first delivery).
    pub fn first(&mut self, id: u64) -> bool {
        self.deliveries += 1;
        self.seen.insert(id)
    }

    /// Deliveries it stopped (redeliveries of a message that acted).
    pub fn skipped(&self) -> u64 {
        self.deliveries - self.seen.len() as u64
    }
}

/// What a ledger posting posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Capture,
    /// A merchant refund, or the reversal of a capture posting (`capture_reversal_id`).
    Refund(Uuid),
}

/// One posting of the journal (`journal_transactions`).
#[derive(Debug, Clone)]
pub struct Posting {
    /// The message that made it.
    pub message: u64,
    pub payment: Uuid,
    pub kind: Kind,
    pub amount: AmountMinor,
    pub journal: Uuid,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub inbox: Inbox,
    /// Every posting made, in order.
    pub journal: Vec<Posting>,
    /// Whether each payment's posting is refused (decided the first time it is asked).
    refused: BTreeMap<Uuid, bool>,
    /// Requests answered with a posting made before (its unique key).
    pub answered_again: u64,
}

impl Ledger {
    /// The payment's postings.
    pub fn of(&self, payment: Uuid) -> impl Iterator<Item = &Posting> {
        self.journal.iter().filter(move |p| p.payment == payment)
    }

    /// What the ledger holds for the payment: its capture less its refunds.
    pub fn net(&self, payment: Uuid) -> i64 {
        self.of(payment)
            .map(|p| match p.kind {
                Kind::Capture => p.amount.get(),
                Kind::Refund(_) => -p.amount.get(),
            })
            .sum()
    }

    /// Message `message`, a posting request; `refuse_percent`: how often a payment's posting
    /// is refused. `None` when the inbox skips it (a redelivery).
    pub fn receive(
        &mut self,
        message: u64,
        payment: Uuid,
        command: &Command,
        dice: &mut Dice,
        refuse_percent: u64,
    ) -> Option<Event> {
        if !self.inbox.first(message) {
            return None;
        }
        let (kind, amount) = match command {
            Command::Post(p) => (Kind::Capture, p.amount_minor),
            Command::PostRefund(r) => (Kind::Refund(r.refund_id), r.amount_minor),
            other => unreachable!("the ledger does not handle {other:?}"),
        };
        if kind == Kind::Capture
            && *(self.refused)
                .entry(payment)
                .or_insert_with(|| dice.chance(refuse_percent))
        {
            return Some(Event::LedgerPostFailed(LedgerPostFailed {
                reason: "account closed".into(),
            }));
        }
        // Its unique key: a second request of a kind posted answers with the first posting.
        let posted = self.of(payment).find(|p| p.kind == kind).cloned();
        self.answered_again += u64::from(posted.is_some());
        let posting = posted.unwrap_or_else(|| {
            let journal = Uuid::from_u64_pair(dice.next(), dice.next());
            let posting = Posting {
                message,
                payment,
                kind,
                amount,
                journal,
            };
            self.journal.push(posting.clone());
            posting
        });
        Some(answer(&posting, amount))
    }
}

/// The ledger's answer: the posting's journal and, as the ledger answers, the amount the
/// command asked for.
fn answer(posting: &Posting, asked: AmountMinor) -> Event {
    match posting.kind {
        Kind::Capture => Event::PaymentSettled(PaymentSettled {
            journal_transaction_id: posting.journal,
            amount_minor: asked,
            currency: usd(),
        }),
        Kind::Refund(refund_id) => Event::RefundPosted(RefundPosted {
            refund_id,
            journal_transaction_id: posting.journal,
            amount_minor: asked,
            currency: usd(),
        }),
    }
}

fn usd() -> sagapay_domain::Currency {
    sagapay_domain::Currency::parse("USD").expect("USD")
}

/// What a merchant heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Finalized(PaymentStatus),
    AwaitingCapture,
    RefundSucceeded(Uuid),
    RefundFailed(Uuid),
}

/// One merchant event (`merchant_events`): the message that made it, the payment, what.
#[derive(Debug, Clone)]
pub struct MerchantEvent {
    pub message: u64,
    pub payment: Uuid,
    pub heard: Heard,
}

/// Notification: a merchant event for every message that passes its inbox.
#[derive(Debug, Default)]
pub struct Notification {
    pub inbox: Inbox,
    pub events: Vec<MerchantEvent>,
}

impl Notification {
    pub fn receive(&mut self, message: u64, payment: Uuid, command: &Command) {
        if !self.inbox.first(message) {
            return;
        }
        let heard = match command {
            Command::Finalized(f) => Heard::Finalized(f.status),
            Command::AwaitingCapture(_) => Heard::AwaitingCapture,
            Command::RefundSucceeded(r) => Heard::RefundSucceeded(r.refund_id),
            Command::RefundFailed(r) => Heard::RefundFailed(r.refund_id),
            other => unreachable!("notification does not handle {other:?}"),
        };
        self.events.push(MerchantEvent {
            message,
            payment,
            heard,
        });
    }

    /// How many times the merchant of `payment` heard `heard`.
    pub fn heard(&self, payment: Uuid, heard: Heard) -> usize {
        self.events
            .iter()
            .filter(|e| e.payment == payment && e.heard == heard)
            .count()
    }
}
