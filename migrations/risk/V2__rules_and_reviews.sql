-- Manual review queue: a payment the rules sent to review waits here for an operator.
CREATE TABLE risk_reviews (
    payment_id       UUID        PRIMARY KEY REFERENCES risk_decisions (payment_id),
    merchant_id      UUID        NOT NULL,
    customer_id      TEXT        NOT NULL,
    amount_minor     BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency         CHAR(3)     NOT NULL,
    reason           TEXT        NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'APPROVED', 'DENIED')),
    -- To continue the saga from the operator's decision: the event that asked for the
    -- decision, its correlation id and trace context.
    source_event_id  UUID        NOT NULL,
    correlation_id   TEXT        NOT NULL,
    headers          JSONB       NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_by       TEXT,
    decided_at       TIMESTAMPTZ,
    CONSTRAINT risk_reviews_decided CHECK ((status = 'PENDING') = (decided_at IS NULL))
);

CREATE INDEX risk_reviews_pending_idx ON risk_reviews (created_at, payment_id) WHERE status = 'PENDING';

-- Outcomes of customers' payments (from payments.finalized), for the recent-failures rule.
CREATE TABLE customer_outcomes (
    payment_id  UUID        PRIMARY KEY,
    customer_id TEXT        NOT NULL,
    status      TEXT        NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX customer_outcomes_customer_idx ON customer_outcomes (customer_id, occurred_at);
