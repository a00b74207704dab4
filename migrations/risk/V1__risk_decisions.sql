-- One risk decision per payment, with the values the rules saw, for audit.
CREATE TABLE risk_decisions (
    payment_id  UUID        PRIMARY KEY,
    merchant_id UUID        NOT NULL,
    customer_id TEXT        NOT NULL,
    decision    TEXT        NOT NULL CHECK (decision IN ('APPROVE', 'REVIEW', 'DENY')),
    reason      TEXT        NOT NULL,
    inputs      JSONB       NOT NULL,
    decided_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX risk_decisions_customer_idx ON risk_decisions (customer_id, decided_at);
