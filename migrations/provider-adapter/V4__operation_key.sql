-- A payment can have several refunds: operations are unique per (payment, operation, key),
-- where the key is the refund id for merchant refunds and empty otherwise.
ALTER TABLE provider_operations ADD COLUMN operation_key TEXT NOT NULL DEFAULT '';
ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_payment_operation;
ALTER TABLE provider_operations
    ADD CONSTRAINT provider_operations_payment_operation_key UNIQUE (payment_id, operation, operation_key);
