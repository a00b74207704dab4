-- Every payment that is not terminal has a deadline: when the step it waits for is overdue.
-- The orchestrator's sweeper re-sends the outstanding command of a payment past its deadline
-- (nudges counts the re-sends of the current step) and, after a few, flags the payment as
-- needing an operator (attention_since, attention_reason). A compensation in progress (a
-- void or a refund the saga started) is recorded, so the sweeper knows which command is
-- outstanding.
ALTER TABLE payments
    ADD COLUMN deadline_at      TIMESTAMPTZ,
    ADD COLUMN nudges           INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN attention_since  TIMESTAMPTZ,
    ADD COLUMN attention_reason TEXT,
    ADD COLUMN compensation     TEXT CHECK (compensation IN ('VOID', 'REFUND'));

UPDATE payments SET deadline_at = updated_at + interval '1 minute'
 WHERE status IN ('CREATED', 'RISK_REVIEW', 'APPROVED', 'AUTHORIZED', 'CAPTURED');

CREATE INDEX payments_deadline_idx ON payments (deadline_at)
    WHERE deadline_at IS NOT NULL AND attention_since IS NULL;
CREATE INDEX payments_attention_idx ON payments (attention_since) WHERE attention_since IS NOT NULL;

-- A merchant refund in flight has a deadline too (REQUESTED: the provider's refund;
-- PROCESSED: the ledger's posting).
ALTER TABLE refunds
    ADD COLUMN deadline_at      TIMESTAMPTZ,
    ADD COLUMN nudges           INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN attention_since  TIMESTAMPTZ,
    ADD COLUMN attention_reason TEXT;

UPDATE refunds SET deadline_at = updated_at + interval '1 minute'
 WHERE status IN ('REQUESTED', 'PROCESSED');

CREATE INDEX refunds_deadline_idx ON refunds (deadline_at)
    WHERE deadline_at IS NOT NULL AND attention_since IS NULL;
CREATE INDEX refunds_attention_idx ON refunds (attention_since) WHERE attention_since IS NOT NULL;
