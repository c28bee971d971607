-- Boards sized at creation (shard_map._model.Buckets): how many hashes hold the board's index entries per
-- index slot and its version registers per node. A user's keys are computed from these, so they never
-- change for a board; boards created before this migration keep the layout they were written with.
ALTER TABLE boards
    ADD COLUMN expected_members bigint  NOT NULL DEFAULT 0     CHECK (expected_members >= 0),
    ADD COLUMN index_buckets    integer NOT NULL DEFAULT 16    CHECK (index_buckets >= 1),
    ADD COLUMN version_buckets  integer NOT NULL DEFAULT 8192  CHECK (version_buckets >= 1);
