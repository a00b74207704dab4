-- A statement that inserts no row (an INSERT of an empty batch, ON CONFLICT DO NOTHING) no
-- longer notifies. PostgreSQL holds a lock of the whole cluster from a notifying
-- transaction's pre-commit until its WAL flush, so every needless NOTIFY made the commits of
-- all six databases queue behind one another.
--
-- One function for every wake-up trigger: it sees the statement's rows (a transition table
-- named `inserted`) and notifies the channel named by the trigger's argument only when there
-- is one. The messaging migrations run before each service's own, so the services' triggers
-- (provider operations, webhook deliveries) use it too.
CREATE FUNCTION notify_when_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify(TG_ARGV[0], '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER outbox_notify_after_insert ON outbox;
DROP FUNCTION outbox_notify();
CREATE TRIGGER outbox_notify_after_insert
    AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notify_when_inserted('sagapay_outbox');
