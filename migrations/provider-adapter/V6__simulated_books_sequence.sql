-- The simulated provider books an operation of a payment without a lock: it reads the
-- payment's books, decides (refuses what a PSP would refuse) and inserts the operation as the
-- books' next entry, `book_seq` = the highest read + 1. Two operations of one payment decided
-- on the same books cannot both be booked: the second insert breaks this index and is decided
-- again on the books that now hold the first (two refunds at once cannot both fit in what is
-- left captured). Two statements instead of a transaction of six (lock, two reads, insert).
-- Rows booked before this migration, and rows planted by tests, have no sequence number.
ALTER TABLE simulated_provider_operations ADD COLUMN book_seq INT;
CREATE UNIQUE INDEX simulated_provider_operations_seq_idx
    ON simulated_provider_operations (payment_id, book_seq);
