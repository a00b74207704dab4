-- A statement that inserts no operation (ON CONFLICT DO NOTHING on a repeat) no longer
-- notifies: the messaging migrations' `notify_when_inserted` (messaging V4) says why.
DROP TRIGGER provider_operations_notify_after_insert ON provider_operations;
DROP FUNCTION provider_operations_notify();
CREATE TRIGGER provider_operations_notify_after_insert
    AFTER INSERT ON provider_operations
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notify_when_inserted('sagapay_provider_operations');
