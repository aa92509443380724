-- Fidelity of Get Users and client config.

-- What GET client/config reports of the organisation (`cloudvpp appsbooks org set`).
ALTER TABLE orgs ADD COLUMN country TEXT NOT NULL DEFAULT 'US';
ALTER TABLE orgs ADD COLUMN default_platform TEXT NOT NULL DEFAULT 'volumestore';

-- Counted blocks: how many active (Registered, Associated) and retired (Retired, Deleted)
-- records each block of keys holds, on two axes (0: ord, 1: chg), at three levels (a level-L
-- block holds the keys k with k >> (8 * L) = block). Kept exact by the writers, in the
-- transaction that writes the records; a filtered or `sinceVersionId` page finds its first
-- record by walking them (at most 256 rows a level), whatever its index.
CREATE TABLE user_blocks (
    org_id BIGINT NOT NULL,
    axis BIGINT NOT NULL,
    level BIGINT NOT NULL,
    block BIGINT NOT NULL,
    active BIGINT NOT NULL,
    retired BIGINT NOT NULL,
    PRIMARY KEY (org_id, axis, level, block)
);
INSERT INTO user_blocks (org_id, axis, level, block, active, retired)
SELECT org_id, axis, level, block, SUM(a), SUM(r) FROM (
    SELECT org_id, 0 AS axis, 1 AS level, ord / 256 AS block, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END AS a, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END AS r FROM users
    UNION ALL
    SELECT org_id, 0, 2, ord / 65536, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END FROM users
    UNION ALL
    SELECT org_id, 0, 3, ord / 16777216, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END FROM users
    UNION ALL
    SELECT org_id, 1, 1, chg / 256, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END FROM users
    UNION ALL
    SELECT org_id, 1, 2, chg / 65536, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END FROM users
    UNION ALL
    SELECT org_id, 1, 3, chg / 16777216, CASE WHEN status IN ('Registered', 'Associated') THEN 1 ELSE 0 END, CASE WHEN status IN ('Registered', 'Associated') THEN 0 ELSE 1 END FROM users
) c GROUP BY org_id, axis, level, block;

-- Filtered pages read their records from these, never skipping the other kind.
CREATE INDEX users_ord_active ON users(org_id, ord) WHERE status IN ('Registered', 'Associated');
CREATE INDEX users_ord_retired ON users(org_id, ord) WHERE status IN ('Retired', 'Deleted');
CREATE INDEX users_chg_active ON users(org_id, chg) WHERE status IN ('Registered', 'Associated');
CREATE INDEX users_chg_retired ON users(org_id, chg) WHERE status IN ('Retired', 'Deleted');
-- GET users?managedAppleId= (by the account's idHash).
CREATE INDEX users_id_hash ON users(org_id, id_hash) WHERE id_hash IS NOT NULL;
