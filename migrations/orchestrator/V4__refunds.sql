-- Merchant-requested refunds of a settled payment, each a saga step of its own:
-- REQUESTED -> (provider refunded) PROCESSED -> (ledger posted) SUCCEEDED, or FAILED.
CREATE TABLE refunds (
    refund_id           UUID        PRIMARY KEY,
    payment_id          UUID        NOT NULL REFERENCES payments (payment_id),
    merchant_id         UUID        NOT NULL,
    amount_minor        BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency            CHAR(3)     NOT NULL,
    reason              TEXT        NOT NULL,
    idempotency_key     TEXT        NOT NULL,
    request_fingerprint TEXT        NOT NULL,
    status              TEXT        NOT NULL DEFAULT 'REQUESTED'
                                    CHECK (status IN ('REQUESTED', 'PROCESSED', 'SUCCEEDED', 'FAILED')),
    provider_reference  TEXT,
    journal_transaction_id UUID,
    failure_reason      TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Same key for the same payment: the same refund.
    CONSTRAINT refunds_payment_idempotency_key UNIQUE (payment_id, idempotency_key)
);

CREATE INDEX refunds_payment_idx ON refunds (payment_id, created_at);
