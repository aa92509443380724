-- The per-organisation request counter behind 9646 (maxRequestPerSecond), kept in the
-- database so that every instance of the service counts against the same budget.
-- `second` is the database clock in whole Unix seconds; `count` the requests in it.
CREATE TABLE request_windows (
    org_id BIGINT PRIMARY KEY,
    second BIGINT NOT NULL,
    count BIGINT NOT NULL
);
