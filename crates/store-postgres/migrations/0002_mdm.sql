-- The MDM service. Times are Unix milliseconds.

CREATE TABLE mdm_devices (
    id TEXT PRIMARY KEY,           -- device-channel enrollment ID (UDID or EnrollmentID)
    kind TEXT NOT NULL,
    platform TEXT NOT NULL,
    serial_number TEXT,
    topic TEXT NOT NULL,
    authenticate BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE mdm_enrollments (
    id TEXT PRIMARY KEY,           -- channel ID: UDID, UDID:UserID, UDID:ShortName, EnrollmentID[:EnrollmentUserID]
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_short_name TEXT,
    topic TEXT NOT NULL,
    push_magic TEXT NOT NULL,
    token_hex TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    token_update_tally BIGINT NOT NULL DEFAULT 0,
    awaiting_configuration BIGINT NOT NULL DEFAULT 0,
    token_update BYTEA,
    last_seen_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX mdm_enrollments_device ON mdm_enrollments(device_id);

-- certificate hash <-> device-channel ID; old hashes stay (re-enrollment adds one)
CREATE TABLE mdm_cert_auth (
    device_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, sha256)
);
CREATE INDEX mdm_cert_auth_sha ON mdm_cert_auth(sha256);

CREATE TABLE mdm_commands (
    command_uuid TEXT PRIMARY KEY,
    request_type TEXT NOT NULL,
    command BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- one row per (enrollment, command): the queue entry and its last result
CREATE TABLE mdm_queue (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- FIFO order
    enrollment_id TEXT NOT NULL,
    command_uuid TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    status TEXT,                              -- NULL: never answered
    result BYTEA,
    invitation_result TEXT,
    not_now_at BIGINT,
    not_now_tally BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    UNIQUE (enrollment_id, command_uuid)
);
-- only commands still to deliver are in this index, so the next-command lookup is one
-- index probe however many finished commands pile up
CREATE INDEX mdm_queue_pending ON mdm_queue(enrollment_id, seq)
    WHERE active = 1 AND (status IS NULL OR status = 'NotNow');
