-- An account can be frozen (a merchant under investigation, a closed account): the ledger
-- then refuses postings to it, and the saga compensates (the capture is refunded).
ALTER TABLE accounts ADD COLUMN frozen_at TIMESTAMPTZ;
