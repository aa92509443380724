-- Licences the engine assigns. Times are Unix milliseconds.

-- The apps and books a location gives every person once associated.
CREATE TABLE engine_location_apps (
    location_id BIGINT NOT NULL,
    adam_id TEXT NOT NULL,
    pricing_param TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (location_id, adam_id)
);

-- One licence of one app or book for one person: pending, requested, assigned, waiting
-- (9709, not enough licences) or failed. Leased like the engine's locations, so that two
-- instances never send one assignment at once.
CREATE TABLE engine_assignments (
    id TEXT PRIMARY KEY,
    location_id BIGINT NOT NULL,
    client_user_id TEXT NOT NULL,
    adam_id TEXT NOT NULL,
    pricing_param TEXT NOT NULL,
    state TEXT NOT NULL,
    error_number BIGINT,
    error_message TEXT,
    note TEXT,
    event_id TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    next_action_at BIGINT NOT NULL,
    UNIQUE (location_id, client_user_id, adam_id)
);
CREATE INDEX engine_assignments_due ON engine_assignments(next_action_at)
    WHERE state IN ('pending', 'requested', 'waiting');
CREATE INDEX engine_assignments_event ON engine_assignments(location_id, event_id)
    WHERE state = 'requested';
CREATE INDEX engine_assignments_waiting ON engine_assignments(location_id, adam_id)
    WHERE state = 'waiting';
CREATE INDEX engine_assignments_state ON engine_assignments(state, created_at);
-- leases are renewed and given up by owner
CREATE INDEX engine_assignments_lease ON engine_assignments(lease_owner) WHERE lease_owner IS NOT NULL;

-- `cloudvpp assign` finds invited people by clientUserId or email (any case), in any location.
CREATE INDEX engine_invitations_client_user ON engine_invitations(client_user_id);
CREATE INDEX engine_invitations_email ON engine_invitations(LOWER(email));
