-- The command that asked for an operation, as received, so that an operation whose retries
-- run out can be dead-lettered (RETRY_EXHAUSTED) with everything needed to replay it.
ALTER TABLE provider_operations
    ADD COLUMN source_envelope  JSONB,
    ADD COLUMN source_topic     TEXT,
    ADD COLUMN source_partition INTEGER,
    ADD COLUMN source_offset    BIGINT;
