-- Unknown is not failed. An operation whose attempts timed out may have happened at the
-- provider: the worker asks the provider (a status query by idempotency key) instead of
-- guessing, on a long schedule, until it knows or gives up (give_up_at).
--   outcome_unknown: an attempt timed out or errored (it may have happened);
--   resolving:       the next step is a status query, not a call;
--   give_up_at:      after this, the operation is EXHAUSTED and an operator decides.
-- NOT_PERFORMED: every attempt was refused before reaching the provider (an authorization
-- that certainly did not happen; the payment fails, nothing to void).
ALTER TABLE provider_operations
    ADD COLUMN outcome_unknown     BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN resolving           BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN give_up_at          TIMESTAMPTZ,
    ADD COLUMN result_amount_minor BIGINT,
    ADD COLUMN result_currency     CHAR(3);

ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_status_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_status_check
    CHECK (status IN ('PENDING', 'SUCCEEDED', 'DECLINED', 'NOT_PERFORMED', 'EXHAUSTED'));

-- Attempts are calls or status queries; a status query can find nothing, a call can be refused.
ALTER TABLE provider_attempts
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'CALL' CHECK (kind IN ('CALL', 'STATUS'));
ALTER TABLE provider_attempts DROP CONSTRAINT provider_attempts_outcome_check;
ALTER TABLE provider_attempts ADD CONSTRAINT provider_attempts_outcome_check
    CHECK (outcome IN ('SUCCEEDED', 'DECLINED', 'TIMEOUT', 'ERROR', 'UNAVAILABLE', 'NOT_FOUND'));

-- The simulated provider's books: what it did with each idempotency key, declines included,
-- and the card of an authorization (captures and refunds behave by it, as a PSP knows the
-- card from the authorization).
ALTER TABLE simulated_provider_operations
    ADD COLUMN outcome        TEXT NOT NULL DEFAULT 'SUCCEEDED' CHECK (outcome IN ('SUCCEEDED', 'DECLINED')),
    ADD COLUMN decline_code   TEXT,
    ADD COLUMN payment_method TEXT;
CREATE INDEX simulated_provider_operations_payment_idx
    ON simulated_provider_operations (payment_id, operation);
