-- A running instance's latest steps (`steps_tail`, which the console polls)
-- and all of them in order (claims, `steps`), read by index: without it
-- the planner may walk the whole table's primary key backwards for a
-- `... WHERE instance_id = $1 ORDER BY seq DESC LIMIT n`.
CREATE INDEX steps_instance_seq ON steps (instance_id, seq);
