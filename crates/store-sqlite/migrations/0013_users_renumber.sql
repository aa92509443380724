-- Change numbers taken after the write (PostgreSQL): an invitation acceptance commits without
-- the organisation's row lock and marks its record here; the record keeps its old `chg` until
-- the sequencer, under that lock, gives it the next number and clears the mark, several
-- records per transaction. SQLite's single writer numbers at once and never marks.
ALTER TABLE users ADD COLUMN renumber INTEGER NOT NULL DEFAULT 0;
CREATE INDEX users_renumber ON users (org_id, ord) WHERE renumber = 1;
