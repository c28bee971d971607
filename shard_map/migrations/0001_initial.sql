-- The control plane's first schema: data nodes, the index slot table, boards, their shards, migration jobs.
-- Applied once by shard_map._migrate inside one transaction; never edit it after release, add 0002_*.sql.

-- Node ids are 'n' || seq, handed out by the store in registration order ('n1', 'n2', ...).
CREATE SEQUENCE node_seq AS bigint START 1;

CREATE TABLE nodes (
    id          text        PRIMARY KEY,
    seq         bigint      NOT NULL UNIQUE,
    address     text        NOT NULL UNIQUE CHECK (address <> ''),
    state       text        NOT NULL DEFAULT 'ACTIVE',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (id = 'n' || seq)
);

ALTER SEQUENCE node_seq OWNED BY nodes.seq;

-- Which node holds each of the 1024 user-index slots (shard_map._model.NUM_SLOTS).
CREATE TABLE index_slots (
    slot  integer PRIMARY KEY CHECK (slot BETWEEN 0 AND 1023),
    node  text    NOT NULL REFERENCES nodes (id)
);

CREATE INDEX index_slots_node ON index_slots (node);

-- sort_order and operator use the numbers of rankshard.v1.SortOrder / rankshard.v1.Operator.
-- epoch goes up by one with every change to the board's shard map (and is announced on the
-- 'rankshard_epoch' channel in the same transaction); next_shard is the number of the next shard id.
CREATE TABLE boards (
    name        text        PRIMARY KEY,
    sort_order  smallint    NOT NULL CHECK (sort_order IN (1, 2)),
    operator    smallint    NOT NULL CHECK (operator IN (1, 2, 3)),
    epoch       bigint      NOT NULL CHECK (epoch >= 1),
    next_shard  integer     NOT NULL CHECK (next_shard >= 1),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Half-open score ranges [lower, upper); NULL is an unbounded end. That a board's shards tile the
-- score line is checked by the store before every write (tiling_problems), not by a constraint.
CREATE TABLE shards (
    board       text    NOT NULL REFERENCES boards (name) ON DELETE CASCADE,
    id          text    NOT NULL,
    lower       bigint,
    upper       bigint,
    node        text    NOT NULL REFERENCES nodes (id),
    state       text    NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'MIGRATING', 'FROZEN')),
    generation  bigint  NOT NULL DEFAULT 1 CHECK (generation >= 1),
    PRIMARY KEY (board, id),
    CHECK (lower IS NULL OR upper IS NULL OR lower < upper)
);

CREATE INDEX shards_node ON shards (node);

-- Resumable rebalancing work (DESIGN.md, "Rebalancing"): one row per split, merge, move or drain.
CREATE TABLE migration_jobs (
    id          bigserial   PRIMARY KEY,
    board       text        REFERENCES boards (name) ON DELETE CASCADE,
    kind        text        NOT NULL,
    params      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state       text        NOT NULL DEFAULT 'PENDING',
    step        text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX migration_jobs_board_state ON migration_jobs (board, state);
