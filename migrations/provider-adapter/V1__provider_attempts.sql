-- Every call to the payment provider, with its outcome and timing.
CREATE TABLE provider_attempts (
    attempt_id         BIGSERIAL   PRIMARY KEY,
    payment_id         UUID        NOT NULL,
    operation          TEXT        NOT NULL CHECK (operation IN ('AUTHORIZE', 'CAPTURE', 'VOID', 'REFUND')),
    attempt_no         INTEGER     NOT NULL CHECK (attempt_no >= 1),
    provider           TEXT        NOT NULL,
    -- Sent to the provider, so a retried call can never act twice there.
    idempotency_key    TEXT        NOT NULL,
    outcome            TEXT        NOT NULL CHECK (outcome IN ('SUCCEEDED', 'DECLINED', 'TIMEOUT', 'ERROR')),
    provider_reference TEXT,
    decline_code       TEXT,
    error              TEXT,
    started_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ NOT NULL,
    latency_ms         INTEGER     NOT NULL
);

CREATE INDEX provider_attempts_payment_idx ON provider_attempts (payment_id, attempt_id);

-- The simulated provider's own books: what the "PSP" did, keyed by the idempotency key we
-- sent. It stands in for the provider's side of the wire, so it is written outside our
-- transactions, the way a real provider call is. A replayed key returns the first result.
CREATE TABLE simulated_provider_operations (
    idempotency_key TEXT        PRIMARY KEY,
    operation       TEXT        NOT NULL,
    payment_id      UUID        NOT NULL,
    amount_minor    BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency        CHAR(3)     NOT NULL,
    reference       TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
