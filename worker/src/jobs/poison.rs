//! Poison chunks: a chunk whose run takes down every worker it reaches (a
//! crash, or a stall long enough to lose its lease) would otherwise move
//! from worker to worker for ever. PostgreSQL counts those ends per chunk
//! (`evaluation_chunks.crashes`); once the count reaches
//! `--max-chunk-crashes`, the next worker to take the chunk runs nothing of
//! it: it writes each remaining run as `errored` with the reason, and the
//! evaluation finishes as usual. This is Sidekiq's dead set and BullMQ's
//! stalled-job limit, per chunk.

use assay_core::db::models::chunks::{self, Chunk};
use assay_core::db::models::evaluations::Evaluation;
use metrics::counter;

use super::chunk::{JobError, Outcome, complete};
use crate::environment::Environment;

/// Gives up the runs of `chunk` that have no result, then completes it.
pub(super) async fn give_up(
    env: &Environment,
    chunk: &Chunk,
    evaluation: &Evaluation,
) -> Result<Outcome, JobError> {
    let reason = format!(
        "not run: this item's chunk ({} items of {}) stopped {} workers in a row (crashed, or stalled past its lease); \
         its remaining runs are not retried (ASSAY_MAX_CHUNK_CRASHES={})",
        chunk.items(),
        chunk.model,
        chunk.crashes,
        env.max_chunk_crashes
    );
    let written = {
        let mut conn = env
            .pool
            .get()
            .await
            .map_err(|error| JobError::Transient(error.into()))?;
        chunks::give_up_remaining(&mut conn, chunk, evaluation, &reason)
            .await
            .map_err(|error| JobError::Transient(error.into()))?
    };
    counter!("assay_chunks_given_up_total", "model" => chunk.model.clone()).increment(1);
    counter!("assay_runs_finished_total", "model" => chunk.model.clone(), "status" => "errored")
        .increment(u64::try_from(written).unwrap_or(0));
    tracing::warn!(
        evaluation.id = %chunk.evaluation_id,
        chunk = chunk.chunk_index,
        model = %chunk.model,
        crashes = chunk.crashes,
        runs = written,
        "poison chunk: its remaining runs end errored"
    );
    complete(env, chunk, evaluation).await
}
