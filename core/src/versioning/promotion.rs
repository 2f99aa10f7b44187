//! The promotion job's steps: evaluate the baseline (the version the label
//! named at submission) and the candidate, compare them, and move the label
//! iff the policy holds and the label still names the baseline.
//!
//! Exactly once: the final transaction locks the promotion row, checks it
//! is still `evaluating`, moves the label by compare-and-set on the recorded
//! baseline, and ends the promotion, all or nothing. A second run of that
//! step finds the promotion ended and does nothing, so the label moves (and
//! `prompt.label_moved` is written) at most once per promotion.

use anyhow::Context as _;
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::{Ctx, EvaluationSetup, Policy, Step, compare, evaluation_for, job_ref};
use crate::db::models::evaluations::{self, CancelReason, EvaluationStatus};
use crate::db::models::labels::{self, Authority, Move, MoveError};
use crate::db::models::lifecycle;
use crate::db::models::prompts::VersionRef;
use crate::db::models::{datasets, promotions};
use crate::ids::{EvaluationId, TenantId};

/// Takes the promotion one step further.
pub async fn step(ctx: &Ctx<'_>, tenant_id: TenantId, id: Uuid) -> anyhow::Result<Step> {
    let mut conn = ctx.pool.get().await?;
    let Some(promotion) = promotions::get(&mut conn, tenant_id, id).await? else {
        return Ok(Step::Done("missing"));
    };
    match promotion.status.as_str() {
        "queued" => start(ctx, &mut conn, &promotion).await,
        "evaluating" => decide(ctx, &mut conn, &promotion).await,
        _ => Ok(Step::Done(final_status(&promotion.status))),
    }
}

fn final_status(status: &str) -> &'static str {
    match status {
        "promoted" => "promoted",
        "rejected" => "rejected",
        "superseded" => "superseded",
        "canceled" => "canceled",
        _ => "failed",
    }
}

async fn fail(
    ctx: &Ctx<'_>,
    conn: &mut diesel_async::AsyncPgConnection,
    promotion: &promotions::Promotion,
    reason: &str,
) -> anyhow::Result<Step> {
    promotions::finish(
        conn,
        promotion.tenant_id,
        promotion.id,
        ctx.actor,
        "failed",
        None,
        reason,
    )
    .await?;
    metrics::counter!("assay_promotions_total", "outcome" => "failed").increment(1);
    Ok(Step::Done("failed"))
}

/// Records both evaluations (reused or new) and goes to `evaluating`.
async fn start(
    ctx: &Ctx<'_>,
    conn: &mut diesel_async::AsyncPgConnection,
    promotion: &promotions::Promotion,
) -> anyhow::Result<Step> {
    let setup: EvaluationSetup =
        serde_json::from_value(promotion.setup.clone()).context("stored setup")?;
    let Some(dataset) = datasets::get(conn, promotion.tenant_id, setup.dataset_id).await? else {
        return fail(ctx, conn, promotion, "the dataset is gone").await;
    };
    let mut made = Vec::new();
    let baseline = pick(
        ctx, conn, promotion, &dataset, &setup, "baseline", &mut made,
    )
    .await?;
    let candidate = pick(
        ctx,
        conn,
        promotion,
        &dataset,
        &setup,
        "candidate",
        &mut made,
    )
    .await?;
    if !promotions::start_evaluating(conn, promotion.id, baseline, candidate).await? {
        // Another run recorded its evaluations first (or the promotion was
        // canceled): the ones made here are nobody's.
        for evaluation in made {
            lifecycle::cancel(
                conn,
                promotion.tenant_id,
                evaluation,
                ctx.actor,
                CancelReason::User,
            )
            .await?;
        }
    }
    Ok(Step::Continue)
}

/// The evaluation of the baseline or the candidate: reused or submitted
/// (then remembered in `made`).
async fn pick(
    ctx: &Ctx<'_>,
    conn: &mut diesel_async::AsyncPgConnection,
    promotion: &promotions::Promotion,
    dataset: &datasets::Dataset,
    setup: &EvaluationSetup,
    role: &str,
    made: &mut Vec<EvaluationId>,
) -> anyhow::Result<(EvaluationId, bool)> {
    let version = match role {
        "baseline" => promotion.baseline_version_id,
        _ => promotion.candidate_version_id,
    };
    let (evaluation, reused) = evaluation_for(
        ctx,
        conn,
        promotion.tenant_id,
        version,
        dataset,
        setup,
        None,
        job_ref("promotion", promotion.id, role),
        promotion.request_id.as_deref(),
    )
    .await?;
    if !reused {
        made.push(evaluation.id);
    }
    Ok((evaluation.id, reused))
}

/// Waits for both evaluations, then compares and decides.
async fn decide(
    ctx: &Ctx<'_>,
    conn: &mut diesel_async::AsyncPgConnection,
    promotion: &promotions::Promotion,
) -> anyhow::Result<Step> {
    let tenant_id = promotion.tenant_id;
    let ids = [
        promotion.baseline_evaluation_id,
        promotion.candidate_evaluation_id,
    ];
    let mut finished = Vec::new();
    for (role, id) in ["baseline", "candidate"].into_iter().zip(ids) {
        let id = id.context("an evaluating promotion has both evaluations")?;
        let Some(evaluation) = evaluations::get(conn, tenant_id, id).await? else {
            return fail(
                ctx,
                conn,
                promotion,
                &format!("the {role} evaluation is gone"),
            )
            .await;
        };
        finished.push((role, evaluation));
    }
    if finished
        .iter()
        .any(|(_, evaluation)| !evaluation.status.is_terminal())
    {
        return Ok(Step::Wait);
    }
    if let Some((role, evaluation)) = finished
        .iter()
        .find(|(_, evaluation)| evaluation.status != EvaluationStatus::Succeeded)
    {
        let reason = format!(
            "the {role} evaluation {} ended {}{}",
            evaluation.id,
            evaluation.status,
            evaluation
                .error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        );
        return fail(ctx, conn, promotion, &reason).await;
    }
    let (baseline, candidate) = (&finished[0].1, &finished[1].1);
    let setup: EvaluationSetup =
        serde_json::from_value(promotion.setup.clone()).context("stored setup")?;
    let policy: Policy =
        serde_json::from_value(promotion.policy.clone()).context("stored policy")?;
    let reports = compare(conn, tenant_id, baseline.id, candidate.id, &setup.models).await?;
    let broken = policy.check(&reports);
    let evidence = serde_json::json!({
        "baseline_evaluation_id": baseline.id,
        "candidate_evaluation_id": candidate.id,
        "models": reports,
        "failed_rule": broken.as_ref().map(|(rule, _)| *rule),
    });
    let label = promotion.label.clone();
    let (baseline_version, candidate_version) = (
        promotion.baseline_version_id,
        promotion.candidate_version_id,
    );
    let (prompt_id, id, actor) = (promotion.prompt_id, promotion.id, ctx.actor);
    let outcome = conn
        .transaction(async |conn| {
            let Some(locked) = promotions::lock(conn, tenant_id, id).await? else {
                return Ok::<_, anyhow::Error>("missing");
            };
            if locked.status != "evaluating" {
                // Another run decided (or it was canceled): nothing to do.
                return Ok(final_status(&locked.status));
            }
            if let Some((rule, explanation)) = &broken {
                let reason = format!("rejected by {rule}: {explanation}");
                promotions::finish(conn, tenant_id, id, actor, "rejected", Some(&evidence), &reason)
                    .await?;
                return Ok("rejected");
            }
            let reason = format!("promotion {id}: the policy holds");
            let moved = labels::move_label(
                conn,
                tenant_id,
                actor,
                prompt_id,
                Move {
                    name: &label,
                    to: VersionRef::Id(candidate_version),
                    expected: Some(Some(VersionRef::Id(baseline_version))),
                    reason: Some(&reason),
                    force: false,
                    protect: None,
                    authority: Authority::Promotion,
                },
            )
            .await;
            match moved {
                Ok(_) => {
                    promotions::finish(
                        conn,
                        tenant_id,
                        id,
                        actor,
                        "promoted",
                        Some(&evidence),
                        "the policy holds; the label was moved",
                    )
                    .await?;
                    Ok("promoted")
                }
                Err(MoveError::Mismatch { current, .. }) => {
                    let now = current
                        .map(|label| format!("version {}", label.version))
                        .unwrap_or_else(|| "nothing".to_owned());
                    promotions::finish(
                        conn,
                        tenant_id,
                        id,
                        actor,
                        "superseded",
                        Some(&evidence),
                        &format!(
                            "the policy holds, but label {label:?} no longer names the baseline (it names {now}); it was not touched"
                        ),
                    )
                    .await?;
                    Ok("superseded")
                }
                Err(MoveError::Database(error)) => Err(error.into()),
                Err(other) => {
                    promotions::finish(
                        conn,
                        tenant_id,
                        id,
                        actor,
                        "failed",
                        Some(&evidence),
                        &format!("the label could not be moved: {other}"),
                    )
                    .await?;
                    Ok("failed")
                }
            }
        })
        .await?;
    metrics::counter!("assay_promotions_total", "outcome" => outcome).increment(1);
    Ok(Step::Done(outcome))
}

/// Cancels an unfinished promotion and its evaluations; false when it had ended.
pub async fn cancel(
    conn: &mut diesel_async::AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<bool> {
    let Some(promotion) = promotions::get(conn, tenant_id, id).await? else {
        return Ok(false);
    };
    if !promotions::finish(conn, tenant_id, id, actor, "canceled", None, "canceled").await? {
        return Ok(false);
    }
    metrics::counter!("assay_promotions_total", "outcome" => "canceled").increment(1);
    // Only evaluations it started: a reused one is finished anyway.
    for (evaluation, reused) in [
        (promotion.baseline_evaluation_id, promotion.baseline_reused),
        (
            promotion.candidate_evaluation_id,
            promotion.candidate_reused,
        ),
    ] {
        if let (Some(evaluation), false) = (evaluation, reused) {
            lifecycle::cancel(conn, tenant_id, evaluation, actor, CancelReason::User).await?;
        }
    }
    Ok(true)
}
