-- The console's own data: who may log in, their sessions, and what they did.

-- An operator's account. The password is stored as an Argon2id PHC string only.
CREATE TABLE operators (
    name          TEXT        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    role          TEXT        NOT NULL CHECK (role IN ('admin', 'viewer')),
    password_hash TEXT        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at   TIMESTAMPTZ
);

-- A logged-in browser. The cookie holds a random token; only its SHA-256 is stored, so a
-- copy of this table logs nobody in. Each session has its own CSRF token.
CREATE TABLE operator_sessions (
    token_sha256 BYTEA       PRIMARY KEY CHECK (length(token_sha256) = 32),
    operator     TEXT        NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf_token   TEXT        NOT NULL CHECK (length(csrf_token) >= 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- Every action an operator took through the console, with why and how it ended: written
-- before the answer is shown, whether the action succeeded or was refused.
CREATE TABLE operator_actions (
    action_id  BIGSERIAL   PRIMARY KEY,
    operator   TEXT        NOT NULL,
    action     TEXT        NOT NULL,
    target     TEXT        NOT NULL,
    reason     TEXT        NOT NULL,
    outcome    TEXT        NOT NULL,
    succeeded  BOOLEAN     NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_at ON operator_actions (at DESC);
