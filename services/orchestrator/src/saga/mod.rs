//! The saga: one handler per step outcome. Each runs inside the inbox transaction, makes one
//! checked transition and enqueues the next command, so a step's effect, its inbox row and its
//! follow-up event commit together or not at all.

pub mod commands;
pub mod deadlines;
mod steps;
pub(crate) mod sweeper;

use crate::store::{
    self, Compensation, Facts, MerchantAction, PaymentRow, Transition, TransitionFailure,
};
use crate::SagaMetrics;
use anyhow::anyhow;
use deadlines::Deadlines;
use sagapay_domain::events::{
    CaptureMethod, LedgerPostFailed, PaymentAuthorized, PaymentCaptured, PaymentFailed,
    PaymentReversed, PaymentSettled, ProviderOperation, ProviderRetriesExhausted, RiskApproved,
    RiskDenied, RiskReviewRequired,
};
use sagapay_domain::events::{
    EventPayload, LedgerRefundRequested, PaymentAwaitingCapture, PaymentRefunded, RefundPosted,
    RefundSucceeded,
};
use sagapay_domain::{AmountMinor, Currency, Envelope, EventType, PaymentStatus, RefundStatus};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox};
use sqlx::PgConnection;

pub struct Saga {
    pub outbox: Outbox,
    pub metrics: SagaMetrics,
    pub deadlines: Deadlines,
}

/// What a step does once its event is accepted.
enum Step {
    Apply,
    /// The payment is not in the state this event expects: a redelivery of an older step, or an
    /// event that arrived out of order. It is recorded (inbox) and otherwise ignored.
    Ignore(&'static str),
}

impl Handler for Saga {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let event_type = env
            .event_type()
            .ok_or_else(|| HandlerError::permanent(anyhow!("unknown event type")))?;
        let payment = store::load_for_update(conn, env.payment_id)
            .await?
            .ok_or_else(|| {
                HandlerError::permanent(anyhow!("unknown payment {}", env.payment_id))
            })?;
        let headers = ctx.headers.propagated();
        match event_type {
            EventType::RiskApproved => {
                let Some(ev) = self.accept::<RiskApproved>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reason = format!("risk approved: {}", ev.reason);
                let next = env.follow_up(&commands::authorize(&payment));
                self.apply(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Approved,
                    &reason,
                    env,
                    Facts::default(),
                    Some(&next),
                )
                .await?;
            }
            EventType::RiskReviewRequired => {
                let Some(ev) = self.accept::<RiskReviewRequired>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reason = format!("risk review required: {}", ev.reason);
                self.apply(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::RiskReview,
                    &reason,
                    env,
                    Facts::default(),
                    None,
                )
                .await?;
            }
            EventType::RiskDenied => {
                let Some(ev) = self.accept::<RiskDenied>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reason = format!("risk denied: {}", ev.reason);
                self.end(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Failed,
                    &reason,
                    env,
                    Facts::default(),
                )
                .await?;
            }
            EventType::PaymentFailed => {
                let Some(ev) = self.accept::<PaymentFailed>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reason = format!(
                    "declined by {} ({}): {}",
                    ev.provider, ev.decline_code, ev.reason
                );
                self.end(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Failed,
                    &reason,
                    env,
                    Facts::default(),
                )
                .await?;
            }
            EventType::PaymentAuthorized => {
                let Some(ev) = self.accept::<PaymentAuthorized>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reported = (ev.amount_minor, ev.currency);
                if !self
                    .reported_as_requested(conn, ctx, &payment, env, "authorization", reported)
                    .await?
                {
                    return Ok(());
                }
                let facts = Facts {
                    authorization_id: Some(&ev.authorization_id),
                    ..Facts::default()
                };
                // No command follows: the adapter captures an automatic payment by itself (its
                // capture comes next on this channel), a manual one waits for its capture
                // command, and one being compensated is voided.
                let reason = match (payment.compensation, payment.capture_method) {
                    (Some(_), _) => format!(
                        "authorized by {} ({}) while being compensated: not captured",
                        ev.provider, ev.authorization_id
                    ),
                    (None, CaptureMethod::Automatic) => format!(
                        "authorized by {} ({}); captured automatically",
                        ev.provider, ev.authorization_id
                    ),
                    (None, CaptureMethod::Manual) => format!(
                        "authorized by {} ({}); waiting for the capture",
                        ev.provider, ev.authorization_id
                    ),
                };
                // A manual payment tells its merchant it can be captured now.
                let awaiting = (payment.compensation.is_none()
                    && payment.capture_method == CaptureMethod::Manual)
                    .then(|| {
                        env.follow_up(&PaymentAwaitingCapture {
                            merchant_id: payment.merchant_id,
                            customer_id: payment.customer_id.clone(),
                            amount_minor: payment.amount_minor,
                            currency: payment.currency,
                            created_at: payment.created_at,
                        })
                    });
                self.apply(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Authorized,
                    &reason,
                    env,
                    facts,
                    awaiting.as_ref(),
                )
                .await?;
            }
            EventType::PaymentCaptured => {
                let Some(ev) = self.accept::<PaymentCaptured>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let reported = (ev.amount_minor, ev.currency);
                // What was asked to be captured: a manual capture may take less.
                let requested = (payment.captured_minor(), payment.currency);
                if !self
                    .matches_request(conn, ctx, &payment, env, "capture", reported, requested)
                    .await?
                {
                    return Ok(());
                }
                // The capture overtook its authorization (two relays of the adapter published
                // them out of order): the authorization it names is applied first, the
                // authorization's own event will be stale.
                let payment = if payment.status == PaymentStatus::Approved {
                    let Some(authorization_id) = ev.authorization_id.as_deref() else {
                        return Err(HandlerError::permanent(anyhow!(
                            "a capture without its authorization id, before the authorization"
                        )));
                    };
                    let reason = format!(
                        "authorized by {} ({authorization_id}), learnt from its capture",
                        ev.provider
                    );
                    let facts = Facts {
                        authorization_id: Some(authorization_id),
                        ..Facts::default()
                    };
                    self.apply(
                        conn,
                        ctx,
                        &payment,
                        PaymentStatus::Authorized,
                        &reason,
                        env,
                        facts,
                        None,
                    )
                    .await?;
                    store::load_for_update(conn, payment.payment_id)
                        .await?
                        .ok_or_else(|| HandlerError::permanent(anyhow!("payment vanished")))?
                } else {
                    payment
                };
                if payment.compensation.is_some() {
                    // Captured while being compensated (an operator failed it with the capture
                    // in flight): recorded, never posted; the adapter turns the pending void
                    // into the refund of this capture.
                    let reason = format!(
                        "captured by {} ({}) while being compensated: not posted, refunded",
                        ev.provider, ev.capture_id
                    );
                    let facts = Facts {
                        capture_id: Some(&ev.capture_id),
                        ..Facts::default()
                    };
                    self.apply(
                        conn,
                        ctx,
                        &payment,
                        PaymentStatus::Captured,
                        &reason,
                        env,
                        facts,
                        None,
                    )
                    .await?;
                    return Ok(());
                }
                let reason = format!("captured by {} ({})", ev.provider, ev.capture_id);
                let facts = Facts {
                    capture_id: Some(&ev.capture_id),
                    ..Facts::default()
                };
                let next = env.follow_up(&commands::post(&payment, &ev.capture_id));
                self.apply(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Captured,
                    &reason,
                    env,
                    facts,
                    Some(&next),
                )
                .await?;
            }
            EventType::PaymentSettled => {
                let ev: PaymentSettled = env.decode()?;
                if payment.compensation == Some(Compensation::Refund) {
                    // Posted after all, while the capture is being refunded (an operator failed
                    // the payment with the posting in flight): the ledger reverses it.
                    return self
                        .reverse_posting(conn, &payment, env, &ev, &headers)
                        .await;
                }
                if let Step::Ignore(why) = self.expect(&payment, applies_in(event_type), env) {
                    return self.ignored(ctx, env, why);
                }
                let reason = format!("ledger posted ({})", ev.journal_transaction_id);
                let facts = Facts {
                    journal_transaction_id: Some(ev.journal_transaction_id),
                    ..Facts::default()
                };
                self.end(
                    conn,
                    ctx,
                    &payment,
                    PaymentStatus::Settled,
                    &reason,
                    env,
                    facts,
                )
                .await?;
            }
            EventType::ProviderRetriesExhausted => {
                let ev: ProviderRetriesExhausted = env.decode()?;
                self.on_retries_exhausted(conn, ctx, &payment, &ev, env, &headers)
                    .await?;
            }
            EventType::LedgerPostFailed => {
                let Some(ev) = self.accept::<LedgerPostFailed>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let capture_id = payment.capture_id.clone().ok_or_else(|| {
                    HandlerError::permanent(anyhow!("captured payment without capture_id"))
                })?;
                let reason = format!(
                    "ledger refused the posting ({}): refunding the capture",
                    ev.reason
                );
                let mut refund = commands::refund_capture(
                    &payment,
                    &format!("ledger refused the posting: {}", ev.reason),
                )
                .map_err(HandlerError::permanent)?;
                refund.capture_id = capture_id;
                let next = env.follow_up(&refund);
                self.compensate(
                    conn,
                    &payment,
                    Compensation::Refund,
                    &reason,
                    env,
                    &next,
                    &headers,
                )
                .await?;
            }
            EventType::PaymentReversed => {
                let Some(ev) = self.accept::<PaymentReversed>(&payment, env, ctx)? else {
                    return Ok(());
                };
                let (what, expected) = match ev.operation {
                    ProviderOperation::Refund => ("capture refunded", payment.captured_minor()),
                    _ => ("authorization voided", payment.amount_minor),
                };
                // The amount reversed must be what was captured (or authorized): a reversal of
                // more, or of less, is not what the saga asked for and waits for an operator.
                if let (Some(amount), Some(currency)) = (ev.amount_minor, ev.currency) {
                    let kind = match ev.operation {
                        ProviderOperation::Refund => "reversal refund",
                        _ => "void",
                    };
                    let expected = (expected, payment.currency);
                    if !self
                        .matches_request(
                            conn,
                            ctx,
                            &payment,
                            env,
                            kind,
                            (amount, currency),
                            expected,
                        )
                        .await?
                    {
                        return Ok(());
                    }
                }
                let reason = format!(
                    "{what} by {} ({}): {}",
                    ev.provider, ev.reference, ev.reason
                );
                // A manual payment's void that its merchant (or the expiry) asked for cancels
                // it; any other reversal is the saga's compensation.
                let canceled = ev.operation == ProviderOperation::Void
                    && matches!(
                        payment.merchant_action,
                        Some(MerchantAction::Cancel | MerchantAction::Expire)
                    );
                let to = if canceled {
                    PaymentStatus::Canceled
                } else {
                    PaymentStatus::Reversed
                };
                self.end(conn, ctx, &payment, to, &reason, env, Facts::default())
                    .await?;
            }
            EventType::PaymentRefunded => {
                let ev: PaymentRefunded = env.decode()?;
                let Some(refund) =
                    store::refunds::lock(conn, ev.refund_id, payment.payment_id).await?
                else {
                    return Err(HandlerError::permanent(anyhow!(
                        "unknown refund {} of payment {}",
                        ev.refund_id,
                        payment.payment_id
                    )));
                };
                if refund.status != RefundStatus::Requested {
                    return self.ignored(ctx, env, "stale");
                }
                let reported = (ev.amount_minor, ev.currency);
                let requested = (refund.amount_minor, refund.currency);
                if !self
                    .matches_request(conn, ctx, &payment, env, "refund", reported, requested)
                    .await?
                {
                    return Ok(());
                }
                store::refunds::mark_processed(
                    conn,
                    ev.refund_id,
                    &ev.reference,
                    self.deadlines.refund,
                )
                .await?;
                let reason = format!(
                    "refund {} refunded by {} ({})",
                    ev.refund_id, ev.provider, ev.reference
                );
                store::record_step(conn, &payment, &reason, Some(env.event_id)).await?;
                let next = env.follow_up(&LedgerRefundRequested {
                    refund_id: ev.refund_id,
                    merchant_id: payment.merchant_id,
                    amount_minor: ev.amount_minor,
                    currency: ev.currency,
                });
                self.outbox.enqueue(conn, &next, &headers).await?;
            }
            EventType::RefundPosted => {
                let ev: RefundPosted = env.decode()?;
                if ev.refund_id == sagapay_domain::events::capture_reversal_id(payment.payment_id) {
                    let reason = format!(
                        "capture posting reversed in the ledger ({})",
                        ev.journal_transaction_id
                    );
                    store::record_step(conn, &payment, &reason, Some(env.event_id)).await?;
                    return Ok(());
                }
                if let Step::Ignore(why) = self.expect(&payment, applies_in(event_type), env) {
                    return self.ignored(ctx, env, why);
                }
                // The refund itself comes back for the merchant's event (below).
                let Some(posted) = store::refunds::mark_succeeded(
                    conn,
                    ev.refund_id,
                    payment.payment_id,
                    ev.journal_transaction_id,
                )
                .await?
                else {
                    return self.ignored(ctx, env, "stale");
                };
                let refunded = store::refunds::succeeded_minor(conn, payment.payment_id).await?;
                assert!(
                    refunded <= payment.captured_minor().get(),
                    "refunds admitted under the payment lock never exceed the amount"
                );
                let to = if refunded == payment.captured_minor().get() {
                    PaymentStatus::Refunded
                } else {
                    PaymentStatus::PartiallyRefunded
                };
                let reason = format!(
                    "refund {} posted ({}): {refunded} of {} {} refunded",
                    ev.refund_id,
                    ev.journal_transaction_id,
                    payment.captured_minor(),
                    payment.currency
                );
                // The merchant hears of the refund itself, whatever the payment's state.
                let succeeded = env.follow_up(&RefundSucceeded {
                    merchant_id: payment.merchant_id,
                    refund_id: ev.refund_id,
                    amount_minor: posted.amount_minor,
                    currency: posted.currency,
                    reason: posted.reason,
                    payment_status: to,
                });
                self.outbox.enqueue(conn, &succeeded, &headers).await?;
                if to == PaymentStatus::Refunded {
                    self.end(conn, ctx, &payment, to, &reason, env, Facts::default())
                        .await?;
                } else {
                    self.apply(
                        conn,
                        ctx,
                        &payment,
                        to,
                        &reason,
                        env,
                        Facts::default(),
                        None,
                    )
                    .await?;
                }
            }
            other => {
                return Err(HandlerError::permanent(anyhow!(
                    "the orchestrator does not handle {other}"
                )))
            }
        }
        Ok(())
    }
}

impl Saga {
    /// A provider operation's outcome is unknown after every attempt: compensate.
    /// The provider refused a capture, void or refund: it did not happen. A merchant's refund
    /// fails (what it held of the refundable amount is free again); anything else is a bug of
    /// ours the provider caught (a capture above the authorization, a refund above what is
    /// left captured), and an operator decides, with the decline in the payment's reason.
    async fn on_declined(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        ev: &ProviderRetriesExhausted,
        code: &str,
        env: &Envelope,
    ) -> Result<(), HandlerError> {
        let op = ev.operation.as_str();
        if let Some(refund_id) = ev.refund_id {
            let reason = format!("refund {refund_id} declined by the provider: {code}");
            store::refunds::mark_failed(conn, refund_id, &reason).await?;
            store::record_step(conn, payment, &reason, Some(env.event_id)).await?;
            return Ok(());
        }
        if ev.operation == ProviderOperation::Authorize {
            return Err(HandlerError::permanent(anyhow!(
                "a declined authorization is reported as payments.failed, not as {}",
                env.event_type
            )));
        }
        let reason = format!("{op} declined by the provider ({code}): it did not happen");
        tracing::error!(payment_id = %payment.payment_id, %reason, "provider refused an operation");
        let failed = self
            .metrics
            .compensations_failed_total
            .with_label_values(&[op]);
        if payment.compensation.is_some() {
            ctx.after_commit(move || failed.inc());
        }
        store::flag_attention(
            conn,
            payment.payment_id,
            payment.status,
            &reason,
            Some(env.event_id),
        )
        .await?;
        Ok(())
    }

    async fn on_retries_exhausted(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        ev: &ProviderRetriesExhausted,
        env: &Envelope,
        headers: &sagapay_messaging::MessageHeaders,
    ) -> Result<(), HandlerError> {
        let op = ev.operation.as_str();
        if let Some(code) = &ev.decline_code {
            return self.on_declined(conn, ctx, payment, ev, code, env).await;
        }
        if let Some(refund_id) = ev.refund_id {
            // The provider never told whether the refund happened: it is not failed (a second
            // refund could then pay the customer twice). It stays REQUESTED, so it keeps
            // counting against what is left to refund, and waits for an operator.
            let reason = format!(
                "refund {refund_id}: outcome unknown after {} attempts ({}); still pending, \
                 counted against the refundable amount",
                ev.attempts, ev.last_error
            );
            store::refunds::flag_outcome_unknown(conn, refund_id, &reason).await?;
            store::record_step(conn, payment, &reason, Some(env.event_id)).await?;
            return Ok(());
        }
        let expected = match ev.operation {
            ProviderOperation::Authorize => PaymentStatus::Approved,
            // The adapter asked the provider for as long as it tries whether the capture
            // happened, and got no answer: voiding could leave a charge without a record, so an
            // operator decides (the three-way reconciliation shows the provider's side).
            ProviderOperation::Capture => {
                if let Step::Ignore(why) = self.expect(payment, &[PaymentStatus::Authorized], env) {
                    return self.ignored(ctx, env, why);
                }
                let reason = format!(
                    "capture outcome unknown after {} attempts ({}): not voided, the capture may \
                     have happened",
                    ev.attempts, ev.last_error
                );
                store::flag_attention(
                    conn,
                    payment.payment_id,
                    payment.status,
                    &reason,
                    Some(env.event_id),
                )
                .await?;
                return Ok(());
            }
            // A compensation that kept failing for as long as the adapter tries (a day by
            // default): an operator decides; replaying its dead letter re-arms it.
            ProviderOperation::Void | ProviderOperation::Refund => {
                let reason = format!(
                    "{op} failed for as long as it was tried ({} attempts, {})",
                    ev.attempts, ev.last_error
                );
                tracing::error!(payment_id = %payment.payment_id, %reason, "compensation failed");
                let failed = self
                    .metrics
                    .compensations_failed_total
                    .with_label_values(&[op]);
                ctx.after_commit(move || failed.inc());
                store::flag_attention(
                    conn,
                    payment.payment_id,
                    payment.status,
                    &reason,
                    Some(env.event_id),
                )
                .await?;
                return Ok(());
            }
        };
        if let Step::Ignore(why) = self.expect(payment, &[expected], env) {
            return self.ignored(ctx, env, why);
        }
        let reason = format!(
            "{op} outcome unknown after {} attempts ({}): voiding the authorization",
            ev.attempts, ev.last_error
        );
        let next = env.follow_up(&commands::void(
            payment,
            &format!("{op} outcome unknown after {} attempts", ev.attempts),
        ));
        self.compensate(
            conn,
            payment,
            Compensation::Void,
            &reason,
            env,
            &next,
            headers,
        )
        .await
    }

    /// The ledger posted a capture the saga is refunding: post its reversal (DR merchant
    /// payable, CR provider clearing, as a refund), once per payment.
    async fn reverse_posting(
        &self,
        conn: &mut PgConnection,
        payment: &PaymentRow,
        env: &Envelope,
        ev: &PaymentSettled,
        headers: &sagapay_messaging::MessageHeaders,
    ) -> Result<(), HandlerError> {
        let reason = format!(
            "the ledger posted the capture ({}) while it was being refunded: reversing the posting",
            ev.journal_transaction_id
        );
        store::record_step(conn, payment, &reason, Some(env.event_id)).await?;
        let next = env.follow_up(&LedgerRefundRequested {
            refund_id: sagapay_domain::events::capture_reversal_id(payment.payment_id),
            merchant_id: payment.merchant_id,
            amount_minor: ev.amount_minor,
            currency: ev.currency,
        });
        self.outbox.enqueue(conn, &next, headers).await?;
        Ok(())
    }

    /// Starts a compensation: the payment records it (and when it is overdue), the timeline
    /// says why, and `command` goes out, in one statement.
    #[allow(clippy::too_many_arguments)]
    async fn compensate(
        &self,
        conn: &mut PgConnection,
        payment: &PaymentRow,
        kind: Compensation,
        reason: &str,
        env: &Envelope,
        command: &Envelope,
        headers: &sagapay_messaging::MessageHeaders,
    ) -> Result<(), HandlerError> {
        let row = self.outbox.row(command, headers);
        store::start_compensation(
            conn,
            payment,
            kind,
            reason,
            Some(env.event_id),
            self.deadlines.compensating,
            &row,
        )
        .await?;
        Ok(())
    }

    /// Whether the provider did what was asked: the amount and currency it reports for `what`
    /// (an authorization, a capture, a refund) are the request's. A difference is never
    /// applied, so never posted: the payment is flagged for an operator, with both amounts,
    /// and counted in `provider_amount_mismatches_total`.
    async fn reported_as_requested(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        env: &Envelope,
        what: &'static str,
        reported: (AmountMinor, Currency),
    ) -> Result<bool, HandlerError> {
        self.matches_request(
            conn,
            ctx,
            payment,
            env,
            what,
            reported,
            (payment.amount_minor, payment.currency),
        )
        .await
    }

    /// [`Saga::reported_as_requested`] against an explicit expected amount (a refund's).
    #[allow(clippy::too_many_arguments)]
    async fn matches_request(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        env: &Envelope,
        what: &'static str,
        (amount, currency): (AmountMinor, Currency),
        (expected_amount, expected_currency): (AmountMinor, Currency),
    ) -> Result<bool, HandlerError> {
        if amount == expected_amount && currency == expected_currency {
            return Ok(true);
        }
        let reason = format!(
            "the provider reports a {what} of {amount} {currency}, but {expected_amount} \
             {expected_currency} was requested: not applied"
        );
        tracing::error!(payment_id = %payment.payment_id, %reason, "provider amount differs");
        store::flag_attention(
            conn,
            payment.payment_id,
            payment.status,
            &reason,
            Some(env.event_id),
        )
        .await?;
        let mismatches = self
            .metrics
            .provider_amount_mismatches_total
            .with_label_values(&[what]);
        ctx.after_commit(move || mismatches.inc());
        Ok(false)
    }

    /// Reads the event's payload, then checks the payment's state against the event's row
    /// of [`steps::STEPS`]: `None` when the event does not apply now (recorded as ignored,
    /// see [`Saga::expect`]). A payload that does not decode is refused first, whatever the
    /// state.
    fn accept<P: EventPayload>(
        &self,
        payment: &PaymentRow,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<Option<P>, HandlerError> {
        let ev: P = env.decode()?;
        debug_assert_eq!(
            steps::of(P::EVENT_TYPE).map(|r| r.checked),
            Some(steps::Checked::OnArrival)
        );
        match self.expect(payment, applies_in(P::EVENT_TYPE), env) {
            Step::Apply => Ok(Some(ev)),
            Step::Ignore(why) => self.ignored(ctx, env, why).map(|()| None),
        }
    }

    /// Whether an event applies to the payment as it is now. Events that do not are never
    /// applied; they are recorded in the inbox and counted by reason:
    /// - `stale`: the payment is already past the state the event expects (a late duplicate
    ///   with a new id, or an answer the saga no longer needs): logged at info;
    /// - `illegal_transition`: the payment has not reached that state (an event out of order,
    ///   or one that should never arrive): logged at error, it points at a bug or a forgery.
    fn expect(&self, payment: &PaymentRow, expected: &[PaymentStatus], env: &Envelope) -> Step {
        if expected.contains(&payment.status) {
            return Step::Apply;
        }
        let furthest = expected.iter().map(|s| progress(*s)).max().unwrap_or(0);
        if progress(payment.status) > furthest {
            tracing::info!(
                payment_id = %env.payment_id,
                event_type = %env.event_type,
                status = %payment.status,
                expected = ?expected,
                "stale event ignored"
            );
            Step::Ignore("stale")
        } else {
            tracing::error!(
                payment_id = %env.payment_id,
                event_type = %env.event_type,
                status = %payment.status,
                expected = ?expected,
                "event would make an illegal transition: rejected"
            );
            Step::Ignore("illegal_transition")
        }
    }

    fn ignored(
        &self,
        ctx: &MessageContext,
        env: &Envelope,
        why: &'static str,
    ) -> Result<(), HandlerError> {
        let ignored = self
            .metrics
            .events_ignored_total
            .with_label_values(&[&env.event_type, why]);
        ctx.after_commit(move || ignored.inc());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        to: PaymentStatus,
        reason: &str,
        env: &Envelope,
        facts: Facts<'_>,
        then: Option<&Envelope>,
    ) -> Result<(), HandlerError> {
        debug_assert!(
            env.event_type()
                .and_then(steps::of)
                .is_some_and(|r| r.moves_to.contains(&to)),
            "{} moved a payment to {to}, which its row of the steps table does not name",
            env.event_type
        );
        let queued = then.map(|next| self.outbox.row(next, &ctx.headers.propagated()));
        let transition = Transition {
            to,
            reason,
            event_id: Some(env.event_id),
            facts,
            deadline: self.deadlines.after(
                to,
                payment.compensation,
                to == PaymentStatus::Authorized
                    && payment.capture_method == CaptureMethod::Manual
                    && payment.merchant_action.is_none(),
            ),
            then: queued.as_ref(),
        };
        match store::transition(conn, payment, &transition).await {
            Ok(()) => {
                let transitions = self
                    .metrics
                    .transitions_total
                    .with_label_values(&[payment.status.as_str(), to.as_str()]);
                ctx.after_commit(move || transitions.inc());
                tracing::debug!(payment_id = %payment.payment_id, from = %payment.status, to = %to, "transition");
                Ok(())
            }
            // Never applied: the table says no. Counted by the caller's metric path.
            Err(TransitionFailure::Illegal(e)) => Err(HandlerError::permanent(e)),
            // Lost a race with another writer: re-read and try again.
            Err(TransitionFailure::Conflict(id)) => Err(HandlerError::transient(anyhow!(
                "payment {id} changed concurrently"
            ))),
            Err(TransitionFailure::Db(e)) => Err(e.into()),
        }
    }

    /// Moves the payment to a terminal state and announces it (`payments.finalized`).
    #[allow(clippy::too_many_arguments)]
    async fn end(
        &self,
        conn: &mut PgConnection,
        ctx: &MessageContext,
        payment: &PaymentRow,
        status: PaymentStatus,
        reason: &str,
        env: &Envelope,
        facts: Facts<'_>,
    ) -> Result<(), HandlerError> {
        debug_assert!(status.is_terminal());
        let finalized = commands::finalized(payment, status, reason);
        // A payment that kept its capture (settled, refunded in part or whole) moved what was
        // captured; the others what was asked for.
        let amount_minor = finalized
            .amount_captured_minor
            .unwrap_or(finalized.amount_minor);
        let currency = finalized.currency;
        let next = env.follow_up(&finalized);
        self.apply(conn, ctx, payment, status, reason, env, facts, Some(&next))
            .await?;
        let elapsed_s = (chrono::Utc::now() - payment.created_at)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let e2e = self
            .metrics
            .payment_e2e_seconds
            .with_label_values(&[status.as_str()]);
        let finalized_amount = self
            .metrics
            .finalized_amount_minor_total
            .with_label_values(&[status.as_str(), currency.as_str()]);
        let amount_abs_minor = amount_minor.get().unsigned_abs();
        ctx.after_commit(move || {
            e2e.observe(elapsed_s);
            finalized_amount.inc_by(amount_abs_minor);
        });
        Ok(())
    }
}

/// How far along the saga a status is; terminal states are furthest.
fn progress(s: PaymentStatus) -> u8 {
    match s {
        PaymentStatus::Created => 0,
        PaymentStatus::RiskReview => 1,
        PaymentStatus::Approved => 2,
        PaymentStatus::Authorized => 3,
        PaymentStatus::Captured => 4,
        PaymentStatus::Settled
        | PaymentStatus::Failed
        | PaymentStatus::Reversed
        | PaymentStatus::PartiallyRefunded
        | PaymentStatus::Refunded
        | PaymentStatus::Canceled => 5,
    }
}

/// The states `event` applies in ([`steps::STEPS`]).
fn applies_in(event: EventType) -> &'static [PaymentStatus] {
    steps::of(event).map_or(&[], |r| r.applies_in)
}
