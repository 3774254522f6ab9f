-- verifyiam schema version 3: when each revision committed, so deletions (NULL rows) older
-- than `iam.tombstone_horizon` can be pruned. Rows that exist already count as committed now.
ALTER TABLE verifyiam_revisions ADD COLUMN IF NOT EXISTS committed_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS verifyiam_revisions_committed_at ON verifyiam_revisions (committed_at);
CREATE INDEX IF NOT EXISTS verifyiam_records_tombstones ON verifyiam_records (revision) WHERE value IS NULL;
