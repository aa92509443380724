-- Assignments: an app or book given to a user (clientUserId) or a device (serial number).
-- Each carries the change number of its last change (`chg`, unique per organisation, from
-- `orgs.assign_chg`): Get Assignments lists them in that order, `sinceVersionId` those after
-- a number. `user_active` turns 0 when the user is retired (excludeInactiveUsers).
CREATE TABLE assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL,
    adam_id TEXT NOT NULL,
    pricing_param TEXT NOT NULL,
    target_kind INTEGER NOT NULL, -- 0: clientUserId, 1: serial number
    target TEXT NOT NULL,
    chg INTEGER NOT NULL,
    user_active INTEGER NOT NULL,
    UNIQUE (org_id, target_kind, target, adam_id, pricing_param),
    UNIQUE (org_id, chg)
);
CREATE INDEX assignments_adam ON assignments(org_id, adam_id, chg);
CREATE INDEX assignments_active ON assignments(org_id, chg) WHERE user_active = 1;
CREATE INDEX assignments_inactive ON assignments(org_id, chg) WHERE user_active = 0;
ALTER TABLE orgs ADD COLUMN assign_chg INTEGER NOT NULL DEFAULT 0;
-- Counted blocks of assignments live in `user_blocks` too, on axis 2 (their `chg`):
-- `active` counts assignments with user_active = 1, `retired` those with 0.
