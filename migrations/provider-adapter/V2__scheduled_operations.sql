-- Provider operations are scheduled, not performed inside the consumer: the command's handler
-- records the operation here (in its inbox transaction) and a worker performs due operations,
-- retrying timeouts with back-off. A slow or failing payment never holds up the others.
CREATE TABLE provider_operations (
    operation_id     UUID        PRIMARY KEY,
    payment_id       UUID        NOT NULL,
    operation        TEXT        NOT NULL CHECK (operation IN ('AUTHORIZE', 'CAPTURE', 'VOID', 'REFUND')),
    status           TEXT        NOT NULL DEFAULT 'PENDING'
                                 CHECK (status IN ('PENDING', 'SUCCEEDED', 'DECLINED', 'EXHAUSTED')),
    request          JSONB       NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A worker owns a claimed operation until claimed_until (then another may take it over).
    claimed_until    TIMESTAMPTZ,
    claim_token      UUID,
    result_reference TEXT,
    last_error       TEXT,
    -- To answer the saga: the command that asked for the operation.
    source_event_id  UUID        NOT NULL,
    correlation_id   TEXT        NOT NULL,
    headers          JSONB       NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One operation of each kind per payment: a repeated command changes nothing.
    CONSTRAINT provider_operations_payment_operation UNIQUE (payment_id, operation)
);

CREATE INDEX provider_operations_due_idx ON provider_operations (next_attempt_at) WHERE status = 'PENDING';

ALTER TABLE provider_attempts ADD COLUMN operation_id UUID REFERENCES provider_operations (operation_id);

CREATE FUNCTION provider_operations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagapay_provider_operations', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER provider_operations_notify_after_insert
    AFTER INSERT ON provider_operations
    FOR EACH STATEMENT EXECUTE FUNCTION provider_operations_notify();

-- The simulated provider counts calls per idempotency key (for "fail N times" test cards).
CREATE TABLE simulated_provider_calls (
    idempotency_key TEXT    PRIMARY KEY,
    calls           INTEGER NOT NULL
);
