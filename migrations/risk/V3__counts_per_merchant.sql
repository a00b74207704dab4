-- Velocity and recent failures count per merchant and customer: a customer id is the
-- merchant's own, and two merchants' "cust-1" are different people. A customer's outcome now
-- names its merchant (every row before this did: payments.finalized carries the merchant, and
-- risk_decisions recorded it for the same payment), and the counting indexes lead with it.
ALTER TABLE customer_outcomes ADD COLUMN merchant_id UUID;
UPDATE customer_outcomes o SET merchant_id = d.merchant_id
  FROM risk_decisions d WHERE d.payment_id = o.payment_id;
-- An outcome whose decision is gone cannot be placed: it stops counting (it is older than the
-- 24 hours the rule looks at, or it belongs to no payment risk decided).
DELETE FROM customer_outcomes WHERE merchant_id IS NULL;
ALTER TABLE customer_outcomes ALTER COLUMN merchant_id SET NOT NULL;

DROP INDEX customer_outcomes_customer_idx;
CREATE INDEX customer_outcomes_merchant_customer_idx
    ON customer_outcomes (merchant_id, customer_id, occurred_at);
DROP INDEX risk_decisions_customer_idx;
CREATE INDEX risk_decisions_merchant_customer_idx
    ON risk_decisions (merchant_id, customer_id, decided_at);
