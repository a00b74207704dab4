-- The timeline records transitions and also saga steps that do not change the status
-- (a compensation being started, a compensation that failed), each with its reason.
ALTER TABLE payment_timeline
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'TRANSITION' CHECK (kind IN ('TRANSITION', 'STEP'));
