-- Failed attempts of an event's current step since its last step that succeeded: a step
-- that keeps failing (data the database refuses) fails its users instead of blocking the
-- organisation's later events for good.
ALTER TABLE events ADD COLUMN step_failures BIGINT NOT NULL DEFAULT 0;
