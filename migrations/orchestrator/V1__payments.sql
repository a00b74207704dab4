-- The orchestrator owns the payment: its state, its audit timeline, and idempotency of creation.

CREATE TABLE payments (
    payment_id             UUID        PRIMARY KEY,
    merchant_id            UUID        NOT NULL,
    customer_id            TEXT        NOT NULL,
    amount_minor           BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency               CHAR(3)     NOT NULL,
    status                 TEXT        NOT NULL CHECK (status IN (
        'CREATED', 'RISK_REVIEW', 'APPROVED', 'AUTHORIZED', 'CAPTURED',
        'SETTLED', 'FAILED', 'REVERSED', 'PARTIALLY_REFUNDED', 'REFUNDED')),
    -- Compare-and-set guard: every transition bumps it; a writer that read an older version loses.
    state_version          INTEGER     NOT NULL DEFAULT 0,
    idempotency_key        TEXT        NOT NULL,
    -- sha256 of the canonical request, to tell a retry from a reuse of the key for another request.
    request_fingerprint    TEXT        NOT NULL,
    correlation_id         TEXT        NOT NULL,
    authorization_id       TEXT,
    capture_id             TEXT,
    journal_transaction_id UUID,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The durable idempotency guard: one payment per (merchant, key), whatever Redis says.
    CONSTRAINT payments_merchant_idempotency_key UNIQUE (merchant_id, idempotency_key)
);

CREATE INDEX payments_status_idx ON payments (status, updated_at);

-- One row per transition, written in the transaction that makes it.
CREATE TABLE payment_timeline (
    id          BIGSERIAL   PRIMARY KEY,
    payment_id  UUID        NOT NULL REFERENCES payments (payment_id),
    from_state  TEXT,
    to_state    TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    event_id    UUID,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX payment_timeline_payment_idx ON payment_timeline (payment_id, id);
