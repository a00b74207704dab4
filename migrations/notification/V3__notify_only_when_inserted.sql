-- A statement that inserts no delivery no longer wakes the dispatchers: the messaging
-- migrations' `notify_when_inserted` (messaging V4) says why.
DROP TRIGGER webhook_deliveries_notify ON webhook_deliveries;
DROP FUNCTION webhook_deliveries_notify();
CREATE TRIGGER webhook_deliveries_notify
    AFTER INSERT ON webhook_deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notify_when_inserted('webhook_deliveries');
