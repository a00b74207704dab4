-- What the provider reported when it moved another amount than was asked for: the saga never
-- applies such an answer (it is never posted), it records it here and flags the payment for
-- an operator. An operator can then end the payment either way with the numbers at hand:
-- `fail` (the capture is refunded; the saga accepts a reversal of exactly what the provider
-- took) or `accept` (the capture is kept and posted for what the provider took).
ALTER TABLE payments
    ADD COLUMN provider_mismatch           TEXT CHECK (provider_mismatch IN ('AUTHORIZE', 'CAPTURE')),
    ADD COLUMN provider_mismatch_reference TEXT,
    ADD COLUMN provider_mismatch_minor     BIGINT CHECK (provider_mismatch_minor > 0),
    ADD CONSTRAINT payments_mismatch_complete CHECK (
        (provider_mismatch IS NULL) = (provider_mismatch_reference IS NULL)
        AND (provider_mismatch IS NULL) = (provider_mismatch_minor IS NULL));

-- Why a payment waits for an operator, as a kind the saga decides on (the reason stays the
-- words): an operator may fail a payment whose void the provider refused (nothing was
-- captured), not one whose void is merely unanswered.
ALTER TABLE payments ADD COLUMN attention_kind TEXT CHECK (attention_kind IN (
    'OVERDUE', 'AMOUNT_MISMATCH', 'COMPENSATION_FAILED', 'CAPTURE_UNRESOLVED', 'VOID_DECLINED'));

-- Each merchant's share of admission control: at most max_in_flight of its payments in the
-- automatic pipeline at once (inside the global limit). A merchant without a row has the
-- default share (SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT). Set by `sagapayctl merchant limit`.
CREATE TABLE merchant_limits (
    merchant_id   UUID        PRIMARY KEY,
    max_in_flight INTEGER     NOT NULL CHECK (max_in_flight >= 0),
    updated_by    TEXT        NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Admission samples, every 100 ms, the payments the pipeline still has to finish, per
-- merchant: only payments that are not terminal and not parked for an operator.
CREATE INDEX payments_in_pipeline_idx ON payments (merchant_id)
    WHERE attention_since IS NULL
      AND status IN ('CREATED', 'APPROVED', 'AUTHORIZED', 'CAPTURED');
