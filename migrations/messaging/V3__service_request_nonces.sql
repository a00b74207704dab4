-- The nonces of signed requests from other services this service accepted: a request is
-- accepted once (a second use is a replay, refused 401). Kept a few minutes, longer than a
-- request's timestamp can be accepted for (service-kit's service_auth deletes older rows).
-- Only services with internal routes write here; the table is everywhere because the
-- messaging migrations are.
CREATE TABLE service_request_nonces (
    caller  TEXT        NOT NULL,
    nonce   TEXT        NOT NULL CHECK (nonce ~ '^[0-9a-f]{32}$'),
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, nonce)
);
CREATE INDEX service_request_nonces_seen_at ON service_request_nonces (seen_at);
