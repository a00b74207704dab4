-- An outbox row the broker refuses for good (larger than it accepts) is set aside: parked_at
-- says when, last_error why. The relay never claims it again; outbox_parked_rows counts it and
-- an alert fires. Without this, one oversized row was retried every second, forever.
-- (Parked rows stay in outbox_pending_idx: they are few, and the relay filters them out.)
ALTER TABLE outbox ADD COLUMN parked_at TIMESTAMPTZ;
CREATE INDEX outbox_parked_idx ON outbox (id) WHERE parked_at IS NOT NULL;
