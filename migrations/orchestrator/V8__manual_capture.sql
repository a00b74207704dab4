-- Manual capture and cancel: what the merchant asked for, once, and what to capture.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN (
    'CREATED', 'RISK_REVIEW', 'APPROVED', 'AUTHORIZED', 'CAPTURED', 'SETTLED', 'FAILED',
    'REVERSED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'CANCELED'));
-- The merchant's capture or cancel of a manual payment (EXPIRE: the authorization was not
-- captured in time), with the idempotency key it came with: a repeat with the same key is
-- answered as the first, anything else is refused.
ALTER TABLE payments ADD COLUMN merchant_action TEXT
    CHECK (merchant_action IN ('CAPTURE', 'CANCEL', 'EXPIRE'));
ALTER TABLE payments ADD COLUMN merchant_action_key TEXT CHECK (length(merchant_action_key) <= 255);
-- What a manual capture takes: at most the authorized amount. NULL: the whole amount.
ALTER TABLE payments ADD COLUMN capture_amount_minor BIGINT
    CHECK (capture_amount_minor > 0 AND capture_amount_minor <= amount_minor);
ALTER TABLE payments ADD CONSTRAINT payments_capture_is_manual
    CHECK (capture_amount_minor IS NULL OR capture_method = 'MANUAL');
