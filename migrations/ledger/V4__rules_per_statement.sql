-- The same rules, enforced with less work per posting. Before, every entry fired three
-- row-level triggers (the balance check at commit, the running balance, the balance guard),
-- so a three-entry capture checked its transaction's balance four times. Now:
--  * entries may only be added to a journal transaction created in the same database
--    transaction (checked once per INSERT statement); a committed journal transaction can no
--    longer change, so
--  * its balance is checked once, at commit, by the deferred trigger of the journal
--    transaction itself (debits = credits, at least two entries, all in its currency);
--  * running balances are updated once per account per statement, from the statement's
--    entries aggregated, in account-id order (so two postings lock balances in one order);
--  * an entry's currency is its account's currency (checked once per statement);
--  * only that trigger may write balances: a statement-level guard, which now covers
--    TRUNCATE too.
-- The rules' error messages are unchanged.

DROP TRIGGER ledger_entries_balanced ON ledger_entries;
DROP TRIGGER journal_transactions_have_entries ON journal_transactions;
DROP TRIGGER ledger_entries_update_balance ON ledger_entries;
DROP TRIGGER account_balances_guarded ON account_balances;
DROP FUNCTION ledger_check_entry_balance();
DROP FUNCTION ledger_apply_balance();
-- Replaced by ledger_check_transaction_balanced below (no join: the transaction's currency is
-- the trigger's row).
DROP FUNCTION ledger_assert_balanced(UUID);

-- At commit: the journal transaction's entries balance, in its own currency.
CREATE FUNCTION ledger_check_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    debits       BIGINT;
    credits      BIGINT;
    entries      INTEGER;
    bad_currency INTEGER;
BEGIN
    SELECT COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0),
           COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'CREDIT'), 0),
           count(*),
           count(*) FILTER (WHERE e.currency <> NEW.currency)
      INTO debits, credits, entries, bad_currency
      FROM ledger_entries e
     WHERE e.transaction_id = NEW.transaction_id;
    IF entries < 2 OR debits <> credits OR bad_currency > 0 THEN
        RAISE EXCEPTION 'journal transaction % is unbalanced: % entries, debits %, credits %, % in another currency',
            NEW.transaction_id, entries, debits, credits, bad_currency
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER journal_transactions_balanced
    AFTER INSERT ON journal_transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_transaction_balanced();

-- Once per INSERT into ledger_entries: the entries belong to journal transactions of this
-- database transaction (a row's xmin is the id of the transaction that inserted it; inside a
-- savepoint it is the subtransaction's, which is refused too: stricter, never laxer), then
-- the running balances move.
CREATE FUNCTION ledger_entries_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tx  UUID;
    bad RECORD;
BEGIN
    -- One primary-key lookup per journal transaction (a join could be planned as a scan of
    -- the whole journal, once per posting).
    FOR tx IN SELECT DISTINCT transaction_id FROM new_entries LOOP
        PERFORM 1 FROM journal_transactions
          WHERE transaction_id = tx AND xmin = pg_current_xact_id()::xid;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'journal transaction % is already committed: entries cannot be added to it; post a new transaction',
                tx
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    -- An entry is in its account's currency (new: before, only the journal transaction's
    -- currency was compared).
    SELECT e.account_id, e.currency AS entry_currency, a.currency AS account_currency INTO bad
      FROM new_entries e JOIN accounts a USING (account_id)
     WHERE a.currency <> e.currency
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'an entry in % cannot be posted to account %, which is held in %',
            bad.entry_currency, bad.account_id, bad.account_currency
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO account_balances (account_id, debits_minor, credits_minor, entries)
    SELECT account_id,
           COALESCE(sum(amount_minor) FILTER (WHERE direction = 'DEBIT'), 0),
           COALESCE(sum(amount_minor) FILTER (WHERE direction = 'CREDIT'), 0),
           count(*)
      FROM new_entries
     GROUP BY account_id
     ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE
       SET debits_minor  = account_balances.debits_minor + EXCLUDED.debits_minor,
           credits_minor = account_balances.credits_minor + EXCLUDED.credits_minor,
           entries       = account_balances.entries + EXCLUDED.entries,
           updated_at    = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_entries_inserted
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_inserted();

-- Balances are written only from inside the trigger above (nesting depth >= 2).
CREATE TRIGGER account_balances_guarded
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION account_balances_guard();
