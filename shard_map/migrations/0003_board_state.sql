-- A board's life: CREATING (the row and its shards are recorded, the nodes' descriptors not all installed
-- yet), ACTIVE (serving), DELETING (hidden; its keys are being removed from the nodes), DELETED (its keys
-- are gone). Only ACTIVE boards are visible to routers and listings. A DELETED row is kept, with its epoch,
-- until the name is created again, and the new board continues that epoch: a router still holding the old
-- board's map sees a newer epoch announced and reloads. Boards from before this migration are ACTIVE.
ALTER TABLE boards
    ADD COLUMN state text NOT NULL DEFAULT 'ACTIVE'
        CHECK (state IN ('CREATING', 'ACTIVE', 'DELETING', 'DELETED'));
