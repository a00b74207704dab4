-- A statement that inserts no outbox row (an INSERT of an empty batch, ON CONFLICT DO
-- NOTHING) no longer notifies. PostgreSQL holds a lock of the whole cluster from a notifying
-- transaction's pre-commit until its WAL flush, so every needless NOTIFY made the commits of
-- all six databases queue behind one another. The trigger sees the statement's rows (a
-- transition table) and notifies only when there is one.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('sagapay_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER outbox_notify_after_insert ON outbox;
CREATE TRIGGER outbox_notify_after_insert
    AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
