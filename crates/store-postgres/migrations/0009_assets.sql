-- Content: the apps and books an organisation owns licences of. Counts are kept by the
-- writers inside the organisation's transaction, so assigned + available = total always.
CREATE TABLE assets (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    adam_id TEXT NOT NULL,
    pricing_param TEXT NOT NULL,
    product_type TEXT NOT NULL,
    -- JSON array of Apple's platform names
    supported_platforms TEXT NOT NULL,
    device_assignable BIGINT NOT NULL, -- 0 or 1, as every flag
    revocable BIGINT NOT NULL,
    total_count BIGINT NOT NULL,
    assigned_count BIGINT NOT NULL DEFAULT 0,
    retired_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, adam_id, pricing_param),
    CHECK (assigned_count >= 0 AND retired_count >= 0 AND assigned_count <= total_count)
);
-- the assets data set's version (Get Assets' versionId)
ALTER TABLE orgs ADD COLUMN asset_chg BIGINT NOT NULL DEFAULT 0;
