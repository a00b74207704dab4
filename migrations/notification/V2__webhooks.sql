-- Webhooks: merchants' endpoints, the events merchants can read and receive, and one
-- delivery per (event, endpoint).

CREATE TABLE webhook_endpoints (
    endpoint_id     UUID        PRIMARY KEY,
    merchant_id     UUID        NOT NULL,
    url             TEXT        NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    enabled_events  TEXT[]      NOT NULL CHECK (cardinality(enabled_events) BETWEEN 1 AND 32),
    -- HMAC needs the secret itself to sign: it is what is stored (never shown again).
    secret          TEXT        NOT NULL,
    -- During a roll, the secret before it, still signed with until it expires.
    previous_secret            TEXT,
    previous_secret_expires_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at      TIMESTAMPTZ,
    -- Failing without a success since then; disabled once that lasts too long.
    failing_since   TIMESTAMPTZ,
    disabled_at     TIMESTAMPTZ,
    disabled_reason TEXT,
    CONSTRAINT webhook_endpoints_roll CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id, created_at)
    WHERE deleted_at IS NULL;

-- What happened, as merchants see it: the body is the exact JSON every delivery sends.
CREATE TABLE merchant_events (
    event_id     TEXT        PRIMARY KEY CHECK (event_id ~ '^evt_[0-9a-f]{32}$'),
    merchant_id  UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    payment_id   UUID        NOT NULL,
    -- When it was recorded here (the listing's order): taken at the insert, not at the
    -- transaction's start, so the order follows commits as closely as one statement can.
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    body         JSONB       NOT NULL
);
CREATE INDEX merchant_events_listing ON merchant_events (merchant_id, created_at DESC, event_id DESC);
CREATE INDEX merchant_events_age ON merchant_events (created_at);

CREATE TYPE webhook_delivery_status AS ENUM ('PENDING', 'DELIVERED', 'FAILED');

CREATE TABLE webhook_deliveries (
    delivery_id     UUID        PRIMARY KEY,
    event_id        TEXT        NOT NULL REFERENCES merchant_events ON DELETE CASCADE,
    endpoint_id     UUID        NOT NULL REFERENCES webhook_endpoints,
    status          webhook_delivery_status NOT NULL DEFAULT 'PENDING',
    attempts        INT         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A dispatcher's claim: others skip the row until it lapses (a crashed dispatcher's rows
    -- come back).
    claimed_until   TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    last_status_code INT,
    last_error      TEXT,
    last_latency_ms INT,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_once UNIQUE (event_id, endpoint_id),
    CONSTRAINT webhook_deliveries_delivered CHECK ((status = 'DELIVERED') = (delivered_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);

-- Every attempt, for merchants and operators reading what happened.
CREATE TABLE webhook_attempts (
    delivery_id  UUID        NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt      INT         NOT NULL CHECK (attempt >= 1),
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code  INT,
    error        TEXT,
    latency_ms   INT         NOT NULL CHECK (latency_ms >= 0),
    PRIMARY KEY (delivery_id, attempt)
);

-- New deliveries wake the dispatchers (LISTEN webhook_deliveries) at commit.
CREATE FUNCTION webhook_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_deliveries', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_notify();
