-- Transactional outbox and inbox, shared by every service. Applied by sagapay-messaging into
-- each service's own database, with its own refinery history table.

-- Outbox: a row per event, written in the same transaction as the business change.
-- The relay claims pending rows (FOR UPDATE SKIP LOCKED), publishes them, marks them published.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    event_type    TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    message_key   TEXT        NOT NULL,
    payload       JSONB       NOT NULL,               -- the whole envelope
    headers       JSONB       NOT NULL DEFAULT '{}',  -- Kafka headers (correlation id, trace context)
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A relay owns a claimed row until claimed_until; a crashed relay's rows are reclaimed after.
    claimed_until TIMESTAMPTZ,
    claim_token   UUID,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT,
    published_at  TIMESTAMPTZ
);

-- The relay only ever scans pending rows.
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays as soon as a transaction that wrote outbox rows commits (NOTIFY is delivered at
-- commit, never for a rolled-back transaction). Polling remains the fallback.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagapay_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify_after_insert
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: one row per (event, consumer) processed, written in the handler's transaction.
-- A redelivered event finds its row and is skipped.
CREATE TABLE inbox (
    event_id       UUID        NOT NULL,
    consumer       TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    kafka_partition INTEGER    NOT NULL,
    kafka_offset   BIGINT      NOT NULL,
    processed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, consumer)
);
