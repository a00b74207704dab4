-- Running balances, kept by the database itself: every inserted entry updates its account's
-- row in the same transaction, and nothing else may write these rows.
CREATE TABLE account_balances (
    account_id    TEXT        PRIMARY KEY REFERENCES accounts (account_id),
    debits_minor  BIGINT      NOT NULL DEFAULT 0 CHECK (debits_minor >= 0),
    credits_minor BIGINT      NOT NULL DEFAULT 0 CHECK (credits_minor >= 0),
    entries       BIGINT      NOT NULL DEFAULT 0 CHECK (entries >= 0),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO account_balances (account_id, debits_minor, credits_minor, entries)
SELECT account_id,
       COALESCE(sum(amount_minor) FILTER (WHERE direction = 'DEBIT'), 0),
       COALESCE(sum(amount_minor) FILTER (WHERE direction = 'CREDIT'), 0),
       count(*)
  FROM ledger_entries GROUP BY account_id;

CREATE FUNCTION ledger_apply_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_balances (account_id, debits_minor, credits_minor, entries)
    VALUES (NEW.account_id,
            CASE WHEN NEW.direction = 'DEBIT' THEN NEW.amount_minor ELSE 0 END,
            CASE WHEN NEW.direction = 'CREDIT' THEN NEW.amount_minor ELSE 0 END,
            1)
    ON CONFLICT (account_id) DO UPDATE
       SET debits_minor  = account_balances.debits_minor + EXCLUDED.debits_minor,
           credits_minor = account_balances.credits_minor + EXCLUDED.credits_minor,
           entries       = account_balances.entries + 1,
           updated_at    = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_entries_update_balance
    AFTER INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_balance();

-- Only the trigger above (nested, depth >= 2) may write balances.
CREATE FUNCTION account_balances_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'account balances are derived from ledger entries and cannot be written directly'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN COALESCE(NEW, OLD);
END
$$;

CREATE TRIGGER account_balances_guarded
    BEFORE INSERT OR UPDATE OR DELETE ON account_balances
    FOR EACH ROW EXECUTE FUNCTION account_balances_guard();

-- Platform fees are recorded on the journal transaction for reporting.
ALTER TABLE journal_transactions ADD COLUMN amount_minor BIGINT;
ALTER TABLE journal_transactions ADD COLUMN fee_minor BIGINT;
