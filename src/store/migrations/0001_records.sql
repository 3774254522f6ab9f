-- verifyiam schema version 1: every stored record in one table, keyed by kind and name, each
-- carrying the global revision that last wrote it; a deleted record stays as a NULL value
-- (a tombstone) so a replica catching up from a revision sees the deletion too.
CREATE TABLE verifyiam_meta (
    id       smallint PRIMARY KEY CHECK (id = 1),
    -- Moves by one with every committed write; writers lock this row, so writes are serial
    -- and revisions commit in order.
    revision bigint   NOT NULL
);
INSERT INTO verifyiam_meta (id, revision) VALUES (1, 0);

CREATE TABLE verifyiam_records (
    kind     text   NOT NULL CHECK (kind IN ('policy', 'deployment', 'role', 'group')),
    name     text   NOT NULL,
    value    jsonb,
    revision bigint NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX verifyiam_records_revision ON verifyiam_records (revision);
