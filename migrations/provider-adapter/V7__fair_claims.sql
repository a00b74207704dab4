-- Fair claims: the worker shares its places among merchants. One merchant whose calls hang
-- (each attempt holds a place for the call timeout) used to fill every place and stall every
-- other merchant's payments. Now each merchant holds at most its cap of a worker's places,
-- and a claim takes the merchants' due operations in turns (see the worker's `claim`).
--
-- merchant_id: the merchant of the payment. An authorization's command names it; the
-- payment's capture, void and refunds copy it from the authorization's row when they are
-- scheduled. Rows scheduled before this migration have none: the claim counts them as one
-- anonymous merchant (the nil UUID). The pending ones are filled in below from their
-- authorization's command, so the operations in progress at the upgrade are shared fairly
-- too. Finished rows are left as they are (no rewrite of the table's history): a later
-- capture, void or refund of such a payment reads the merchant from its authorization's
-- command when it is scheduled.
ALTER TABLE provider_operations ADD COLUMN merchant_id UUID;

UPDATE provider_operations o
   SET merchant_id = (a.source_envelope #>> '{payload,merchant_id}')::uuid
  FROM provider_operations a
 WHERE o.status = 'PENDING'
   AND a.payment_id = o.payment_id AND a.operation = 'AUTHORIZE'
   AND a.source_envelope #>> '{payload,merchant_id}'
       ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';

-- The claim's one index: per merchant, its pending operations by priority, then due time.
-- Priority 0 finishes a payment (a capture, void or refund, or a status query about any
-- operation, whose outcome may already have moved money); 1 starts one (a new authorization).
-- Both are expressions rather than columns: a stored generated column would rewrite the
-- table, and the claim writes them exactly as here (`worker.rs`, MERCHANT and PRIORITY), so
-- the planner matches them to the index.
--
-- It serves every part of the claim without reading all pending rows:
-- - the merchants with pending work: a loose index scan (a recursive query taking the next
--   merchant after the last one, one index descent per merchant), which costs nothing when
--   operations are written. A table of merchants with work, kept by triggers or by the
--   worker, was the alternative: one row per merchant updated by every operation's
--   insert, attempt and end, so a merchant with much traffic would serialize its own
--   operations' writes on that row. The descents cost one per merchant with pending work,
--   per claim: cheap for the merchants a provider has at once; see the worker's module
--   header for when that would no longer hold;
-- - a merchant's due operations, in priority order: (merchant, priority, next_attempt_at <=
--   now()) is a range of the index, read only as far as the merchant's room;
-- - a merchant's earliest pending operation, for when the next claim is due: the first
--   entry of each of its two priorities.
CREATE INDEX provider_operations_merchant_due_idx ON provider_operations (
    (COALESCE(merchant_id, '00000000-0000-0000-0000-000000000000'::uuid)),
    (CASE WHEN operation = 'AUTHORIZE' AND NOT resolving THEN 1 ELSE 0 END),
    next_attempt_at
) WHERE status = 'PENDING';

-- The claim no longer reads pending operations by due time alone; every update of an
-- attempt's due time would still maintain this index.
DROP INDEX provider_operations_due_idx;
