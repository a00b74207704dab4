-- As the outbox's trigger (messaging V4): a statement that inserts no operation (ON CONFLICT
-- DO NOTHING on a repeat) no longer notifies, and so no longer takes PostgreSQL's
-- cluster-wide notify lock through its commit's WAL flush.
CREATE OR REPLACE FUNCTION provider_operations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('sagapay_provider_operations', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER provider_operations_notify_after_insert ON provider_operations;
CREATE TRIGGER provider_operations_notify_after_insert
    AFTER INSERT ON provider_operations
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION provider_operations_notify();
