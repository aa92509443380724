-- Content: the apps and books an organisation owns licences of. Counts are kept by the
-- writers inside the organisation's transaction, so assigned + available = total always.
CREATE TABLE assets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    adam_id TEXT NOT NULL,
    pricing_param TEXT NOT NULL,
    product_type TEXT NOT NULL,
    -- JSON array of Apple's platform names
    supported_platforms TEXT NOT NULL,
    device_assignable INTEGER NOT NULL, -- 0 or 1, as every flag
    revocable INTEGER NOT NULL,
    total_count INTEGER NOT NULL,
    assigned_count INTEGER NOT NULL DEFAULT 0,
    retired_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (org_id, adam_id, pricing_param),
    CHECK (assigned_count >= 0 AND retired_count >= 0 AND assigned_count <= total_count)
);
-- the assets data set's version (Get Assets' versionId)
ALTER TABLE orgs ADD COLUMN asset_chg INTEGER NOT NULL DEFAULT 0;
