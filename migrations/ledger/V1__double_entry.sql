-- Double-entry ledger. The database itself enforces the rules, not only the code:
--  * the entries of one journal transaction balance (debits = credits, at least two entries,
--    one currency), checked by deferred constraint triggers at commit;
--  * journal transactions and entries are append-only: UPDATE, DELETE and TRUNCATE are
--    rejected. A correction is a new, reversing transaction.

CREATE TABLE accounts (
    account_id  TEXT        PRIMARY KEY,      -- e.g. 'USD:provider_clearing'
    kind        TEXT        NOT NULL CHECK (kind IN ('ASSET', 'LIABILITY', 'REVENUE', 'EXPENSE', 'EQUITY')),
    currency    CHAR(3)     NOT NULL,
    merchant_id UUID,
    description TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE journal_transactions (
    transaction_id UUID        PRIMARY KEY,
    payment_id     UUID        NOT NULL,
    posting_kind   TEXT        NOT NULL,      -- 'CAPTURE', later 'REFUND', 'REVERSAL', ...
    currency       CHAR(3)     NOT NULL,
    description    TEXT        NOT NULL,
    event_id       UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Posting is idempotent: one journal transaction per (payment, posting kind).
    CONSTRAINT journal_transactions_payment_kind UNIQUE (payment_id, posting_kind)
);

CREATE TABLE ledger_entries (
    entry_id       BIGSERIAL   PRIMARY KEY,
    transaction_id UUID        NOT NULL REFERENCES journal_transactions (transaction_id),
    account_id     TEXT        NOT NULL REFERENCES accounts (account_id),
    direction      TEXT        NOT NULL CHECK (direction IN ('DEBIT', 'CREDIT')),
    amount_minor   BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency       CHAR(3)     NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX ledger_entries_transaction_idx ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account_id, entry_id);

-- Balance check of one journal transaction, run at commit.
CREATE FUNCTION ledger_assert_balanced(tx_id UUID) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    debits  BIGINT;
    credits BIGINT;
    entries INTEGER;
    bad_currency INTEGER;
BEGIN
    SELECT COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0),
           COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'CREDIT'), 0),
           count(*),
           count(*) FILTER (WHERE e.currency <> t.currency)
      INTO debits, credits, entries, bad_currency
      FROM journal_transactions t
      LEFT JOIN ledger_entries e ON e.transaction_id = t.transaction_id
     WHERE t.transaction_id = tx_id;
    IF entries < 2 OR debits <> credits OR bad_currency > 0 THEN
        RAISE EXCEPTION 'journal transaction % is unbalanced: % entries, debits %, credits %, % in another currency',
            tx_id, entries, debits, credits, bad_currency
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;

CREATE FUNCTION ledger_check_entry_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.transaction_id);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_balance();

-- A journal transaction with no entries at all is unbalanced too.
CREATE CONSTRAINT TRIGGER journal_transactions_have_entries
    AFTER INSERT ON journal_transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_balance();

-- Append-only.
CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed; post a reversing transaction',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER journal_transactions_append_only
    BEFORE UPDATE OR DELETE ON journal_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER journal_transactions_no_truncate
    BEFORE TRUNCATE ON journal_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
