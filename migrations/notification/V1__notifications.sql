-- What was sent to merchants about their payments. One notification per payment and kind.
CREATE TABLE notifications (
    notification_id UUID        PRIMARY KEY,
    payment_id      UUID        NOT NULL,
    merchant_id     UUID        NOT NULL,
    kind            TEXT        NOT NULL,   -- e.g. 'payment.settled'
    channel         TEXT        NOT NULL,   -- 'log' for now; webhooks later
    payload         JSONB       NOT NULL,
    event_id        UUID        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT notifications_payment_kind UNIQUE (payment_id, kind)
);
