-- PostgreSQL's 0013 makes request_windows unlogged. SQLite has no such tables, and needs
-- none: in WAL mode with synchronous=NORMAL a commit does not wait for the disk.
SELECT 1;
