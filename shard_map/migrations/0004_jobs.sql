-- Online rebalancing (docs/architecture.md, "Rebalancing"): splits, merges and moves run as jobs of the one
-- primitive CARVE, each a row here that says where it stands, so a job interrupted anywhere is finished or rolled
-- back from its row alone.

-- While a split of a shard is under way, its cut: routers decide boundary crossings on it already.
ALTER TABLE shards ADD COLUMN pending_cut bigint;

-- state: RUNNING, DONE or ABORTED; step: the CARVE step the job has reached (shard_map._jobs.JobStep).
-- source / target: the shard carved from and the shard carved into (new for a split or a move, the neighbour of a
-- merge); target_node: where the target lives. The plan (the carved range, planned generations, epochs) is in
-- params. owner / lease_until: the process running the job and until when its claim holds; another may take the
-- job over (`rankshard jobs resume`) only once the lease has passed.
ALTER TABLE migration_jobs
    ADD COLUMN source       text,
    ADD COLUMN target       text,
    ADD COLUMN target_node  text,
    ADD COLUMN owner        text,
    ADD COLUMN lease_until  timestamptz,
    ADD COLUMN copied       bigint  NOT NULL DEFAULT 0,
    ADD COLUMN total        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN dirty        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN freeze_ms    integer,
    ADD COLUMN scan_cursor  text    NOT NULL DEFAULT '0';

-- Which shards a running job works on: one job per shard at a time (a second is refused naming the first).
CREATE TABLE job_shards (
    board  text   NOT NULL,
    shard  text   NOT NULL,
    job    bigint NOT NULL REFERENCES migration_jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (board, shard)
);
