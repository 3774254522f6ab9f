-- verifyiam schema version 2: the history each revision names. chain(n) = SHA-256 over
-- chain(n-1) and the canonical changes of revision n, written in the same transaction as the
-- revision. A replica compares the entry of the revision it holds at every catch-up: a
-- different chain, or none (a backup restored with pg_restore), makes it reload everything.
-- IF NOT EXISTS and the DELETE: a dump taken before this version may be restored over a
-- database that has it; migrating again then starts a fresh chain.
CREATE TABLE IF NOT EXISTS verifyiam_revisions (
    revision bigint PRIMARY KEY,
    chain    bytea  NOT NULL CHECK (length(chain) = 32)
);
DELETE FROM verifyiam_revisions;
-- The history before this version is unknown: an empty store starts from the genesis chain
-- (32 zero bytes); any other revision gets a chain that no other database shares.
INSERT INTO verifyiam_revisions (revision, chain)
SELECT revision,
       CASE WHEN revision = 0 THEN decode(repeat('00', 32), 'hex')
            ELSE sha256(convert_to('verifyiam unknown history ' || revision || ' '
                 || random()::text || ' ' || clock_timestamp()::text || ' '
                 || pg_backend_pid()::text, 'UTF8'))
       END
FROM verifyiam_meta WHERE id = 1;
