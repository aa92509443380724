-- The invitation engine. Times are Unix milliseconds unless named *_secs.

CREATE TABLE engine_locations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    stoken TEXT NOT NULL,
    base_url TEXT NOT NULL,
    uid TEXT,
    notify_token TEXT NOT NULL,
    version_id TEXT,
    expires_at_secs BIGINT,
    conflict BIGINT NOT NULL DEFAULT 0,
    last_full_sync_at BIGINT,
    last_sync_at BIGINT,
    created_at BIGINT NOT NULL
);

-- one row per (location, clientUserId): the active record, or 'Retired'
CREATE TABLE engine_mirror (
    location_id BIGINT NOT NULL,
    client_user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    invite_code TEXT,
    id_hash TEXT,
    email TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (location_id, client_user_id)
);

CREATE TABLE engine_notifications_seen (
    notification_id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);

CREATE TABLE engine_invitations (
    id TEXT PRIMARY KEY,
    location_id BIGINT NOT NULL,
    client_user_id TEXT NOT NULL,
    email TEXT,
    enrollment_id TEXT,
    channel TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    invite_code TEXT,
    invitation_url TEXT,
    event_id TEXT,
    command_uuid TEXT,
    invitation_result TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    next_action_at BIGINT NOT NULL
);
CREATE INDEX engine_invitations_due ON engine_invitations(next_action_at)
    WHERE state NOT IN ('associated', 'failed', 'retired');
CREATE INDEX engine_invitations_person ON engine_invitations(location_id, client_user_id);
CREATE INDEX engine_invitations_state ON engine_invitations(state, created_at);
CREATE INDEX engine_invitations_command ON engine_invitations(channel, command_uuid) WHERE state = 'queued';
