-- When the payment's authorization is captured: AUTOMATIC (the provider adapter captures right
-- after the authorization, no command needed) or MANUAL (the capture waits for its command).
ALTER TABLE payments ADD COLUMN capture_method TEXT NOT NULL DEFAULT 'AUTOMATIC'
    CHECK (capture_method IN ('AUTOMATIC', 'MANUAL'));
