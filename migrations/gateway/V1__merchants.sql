-- Merchants and their API keys. Keys are stored only as SHA-256 hashes; the key itself is
-- shown once, when it is created.
CREATE TABLE merchants (
    merchant_id UUID        PRIMARY KEY,
    name        TEXT        NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      UUID        PRIMARY KEY,
    merchant_id UUID        NOT NULL REFERENCES merchants (merchant_id),
    key_hash    BYTEA       NOT NULL UNIQUE,
    -- The first characters of the key, to tell keys apart in listings.
    key_prefix  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

CREATE INDEX api_keys_merchant_idx ON api_keys (merchant_id);
