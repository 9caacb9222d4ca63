-- Several replicas on one database (SPEC §9): the Get Job pace they share, and who is alive.

-- The rate limiter of every replica together, in one row (see src/store/pace.rs): the recent
-- call slots, the next slot of the even spread, a 429's hold, the lowered rate and its climb,
-- and an auth pause. Changed only under the row's lock, so all replicas draw their Get Job
-- calls from one schedule. Times are unix milliseconds of the replicas' clocks; the smallest
-- BIGINT means "never".
CREATE TABLE pictory_pace (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    -- the rate in force since calm_since (NULL: never lowered, reconcile.rate)
    effective     BIGINT,
    calm_since    BIGINT NOT NULL DEFAULT (-9223372036854775807 - 1),
    halved_at     BIGINT NOT NULL DEFAULT (-9223372036854775807 - 1),
    -- slots of the most recent calls, oldest first (at most reconcile.rate of them)
    recent        BIGINT[] NOT NULL DEFAULT '{}',
    next_slot     BIGINT NOT NULL DEFAULT (-9223372036854775807 - 1),
    hold_until    BIGINT NOT NULL DEFAULT (-9223372036854775807 - 1),
    -- the hold for the next 429 without Retry-After (NULL: the first, one second)
    blind_hold_ms BIGINT,
    -- set while Pictory refuses the API key: why, and when the next probe may go
    paused_detail TEXT,
    next_probe_at BIGINT
);
INSERT INTO pictory_pace (id) VALUES (1);

-- Each replica writes its row every few seconds, stamped with the database's clock (so the
-- replicas' own clocks do not matter): `jobhook_replicas` counts the rows seen lately.
CREATE TABLE replicas (
    owner   BIGINT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
