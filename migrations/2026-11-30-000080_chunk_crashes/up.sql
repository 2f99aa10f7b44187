-- Poison chunks: a chunk whose run keeps taking its worker down (a crash,
-- or a stall long enough to lose its lease) is counted here; past a limit
-- its remaining runs end `errored` instead of moving to the next worker.
ALTER TABLE evaluation_chunks
    ADD COLUMN crashes integer NOT NULL DEFAULT 0 CHECK (crashes >= 0);
