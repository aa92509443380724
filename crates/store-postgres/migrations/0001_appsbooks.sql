-- The Apps and Books service. Times are Unix milliseconds unless named *_secs.

CREATE TABLE orgs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    secret TEXT NOT NULL,
    -- highest users.ord handed out (records are never deleted, so ord is dense)
    user_count BIGINT NOT NULL DEFAULT 0,
    -- highest users.chg handed out: the data-set version
    chg BIGINT NOT NULL DEFAULT 0,
    mdm_info TEXT,
    notification_url TEXT,
    notification_auth_token TEXT,
    notification_types TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    stoken TEXT NOT NULL UNIQUE,
    expires_at_secs BIGINT NOT NULL,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX tokens_org ON tokens(org_id);

CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    ord BIGINT NOT NULL,
    chg BIGINT NOT NULL,
    client_user_id TEXT NOT NULL,
    email TEXT,
    managed_apple_id TEXT,
    invite_code TEXT,
    id_hash TEXT,
    status TEXT NOT NULL
);
CREATE UNIQUE INDEX users_ord ON users(org_id, ord);
CREATE UNIQUE INDEX users_chg ON users(org_id, chg);
CREATE INDEX users_client ON users(org_id, client_user_id);
-- at most one Registered/Associated record per clientUserId
CREATE UNIQUE INDEX users_active_client ON users(org_id, client_user_id) WHERE status <> 'Retired';
CREATE UNIQUE INDEX users_invite ON users(invite_code) WHERE invite_code IS NOT NULL;
-- one Apple Account per active user of an organisation
CREATE UNIQUE INDEX users_active_hash ON users(org_id, id_hash) WHERE status = 'Associated';

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    users TEXT NOT NULL,
    num_requested BIGINT NOT NULL,
    num_completed BIGINT NOT NULL DEFAULT 0,
    progress TEXT NOT NULL DEFAULT '{}',
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX events_pending ON events(id) WHERE status = 'PENDING';
CREATE INDEX events_pending_org ON events(org_id, id) WHERE status = 'PENDING';

CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL,
    notification_type TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_org ON outbox(org_id, state);

CREATE TABLE limits (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
