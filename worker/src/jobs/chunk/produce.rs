//! The producer: reads a chunk's items a page at a time and starts a call
//! for every run without a result, within the process's permits and the
//! evaluation's budgets.

use std::sync::Arc;

use assay_core::db::models::budgets;
use assay_core::db::models::chunks::Chunk;
use assay_core::db::models::datasets;
use assay_core::db::models::evaluations::{CancelReason, Evaluation};
use assay_core::db::models::lifecycle;
use assay_core::db::models::results::{self, NewResult};
use assay_core::domain::ChatMessage;
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::JobError;
use super::call::{Run, evaluate_one, item_graders, log_errored};
use super::plan::Plan;
use super::writer::Spend;
use crate::capacity::HeldSlot;
use crate::environment::Environment;
use crate::leases::ChunkHandle;

/// Items read per page.
const ITEM_PAGE: i32 = 500;

/// Reads the chunk's items a page at a time and starts a call for every
/// run that has no result, one permit at a time (so the chunks of a process
/// take turns). Every run of the chunk is taken off the backlog: skipped,
/// started, or abandoned when the chunk stops. True when a budget stopped it
/// (the evaluation is canceled).
pub(super) async fn produce(
    env: &Arc<Environment>,
    plan: &Arc<Plan>,
    chunk: &Chunk,
    model_index: usize,
    handle: &ChunkHandle,
    results: mpsc::Sender<(NewResult, Spend)>,
) -> Result<bool, JobError> {
    let evaluation = &plan.evaluation;
    let priority = chunk.priority();
    let repeats = evaluation.repeats;
    let runs = usize::try_from(i64::from(chunk.items()) * i64::from(repeats)).unwrap_or(0);
    env.backlog.add_chunk(runs);
    let mut accounted = 0;
    let mut calls = JoinSet::new();
    let mut from = chunk.first_position;
    let mut budget_stop = false;
    let outcome = 'pages: loop {
        // A dead writer (it gave up on PostgreSQL) makes further calls pointless.
        if from > chunk.last_position
            || env.shutting_down()
            || handle.stopped()
            || results.is_closed()
        {
            break Ok(());
        }
        let to = (from + ITEM_PAGE - 1).min(chunk.last_position);
        let page = async {
            let mut conn = env.pool.get().await.map_err(JobError::transient)?;
            let items = datasets::items_between(
                &mut conn,
                evaluation.tenant_id,
                evaluation.dataset_id,
                from,
                to,
            )
            .await
            .map_err(JobError::transient)?;
            let done = results::existing_keys(
                &mut conn,
                evaluation.tenant_id,
                evaluation.id,
                &chunk.model,
                from,
                to,
            )
            .await
            .map_err(JobError::transient)?;
            let sources = match evaluation.source_evaluation_id {
                None => None,
                Some(source) => Some(
                    results::stored_outputs(
                        &mut conn,
                        evaluation.tenant_id,
                        source,
                        &chunk.model,
                        from,
                        to,
                    )
                    .await
                    .map_err(JobError::transient)?,
                ),
            };
            Ok::<_, JobError>((items, done, sources))
        }
        .await;
        let (items, done, sources) = match page {
            Ok(page) => page,
            Err(error) => break 'pages Err(error),
        };
        from = to + 1;
        // Off the async runtime: a tenant's template may spend its whole
        // render budget on every item (templates::RENDER_FUEL), and its own
        // graders compile regexes and templates.
        let rendering = plan.clone();
        let rendered_page = tokio::task::spawn_blocking(move || {
            items
                .into_iter()
                .map(|item| {
                    let context = item.template_context();
                    let rendered = rendering.template.render(&context);
                    // The item's own graders, compiled once for all its runs.
                    let graders = item_graders(&item);
                    (
                        Arc::new(item),
                        Arc::new(context),
                        Arc::new(rendered),
                        Arc::new(graders),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
        let rendered_page = match rendered_page {
            Ok(page) => page,
            Err(error) => break 'pages Err(JobError::transient(error)),
        };
        for (item, context, rendered, item_graders) in rendered_page {
            for repeat in 0..repeats {
                if env.shutting_down() || handle.stopped() || results.is_closed() {
                    break 'pages Ok(());
                }
                let key = (item.position, repeat);
                accounted += 1;
                if done.contains(&key) {
                    env.backlog.remove(1);
                    continue;
                }
                let source = sources.as_ref().map(|sources| sources.get(&key).cloned());
                let permit = env.slots.acquire(priority, evaluation.id).await;
                env.backlog.remove(1);
                // Checked again: a cancel may have come while waiting for the permit.
                if handle.stopped() {
                    break 'pages Ok(());
                }
                let reserved =
                    match reserve(env, plan, model_index, &rendered, source.is_some()).await {
                        Ok(Ok(reserved)) => reserved,
                        Ok(Err(reason)) => {
                            budget_stop = true;
                            if let Err(error) = stop_for_budget(env, evaluation, reason).await {
                                break 'pages Err(error);
                            }
                            break 'pages Ok(());
                        }
                        Err(error) => break 'pages Err(error),
                    };
                let (plan, item, context, rendered, results, item_graders) = (
                    plan.clone(),
                    item.clone(),
                    context.clone(),
                    rendered.clone(),
                    results.clone(),
                    item_graders.clone(),
                );
                let slot = HeldSlot::new(env.slots.clone(), priority, evaluation.id, permit);
                calls.spawn(async move {
                    let run = Run {
                        model_index,
                        repeat,
                        source,
                    };
                    let called = run.source.is_none();
                    let (result, errored) = evaluate_one(
                        &plan,
                        run,
                        &item,
                        &context,
                        &rendered,
                        &item_graders,
                        &slot,
                    )
                    .await;
                    drop(slot);
                    if let Some(reason) = errored {
                        log_errored(&result, reason);
                    }
                    counter!("assay_runs_finished_total", "model" => result.model.clone(), "status" => result.status)
                        .increment(1);
                    let spend = Spend {
                        reserved,
                        spent: if called { result.call.cost_usd } else { 0.0 } + result.grading_cost_usd,
                    };
                    // The writer outlives every call; a send fails only if it died, and then
                    // the job fails on the writer's error.
                    let _ = results.send((result, spend)).await;
                }.in_current_span());
                while let Some(joined) = calls.try_join_next() {
                    report_call_panic(joined);
                }
            }
        }
    };
    // Runs never reached (a stop, a shutdown, an error, or items the dataset lacks).
    env.backlog.remove(runs.saturating_sub(accounted));
    while let Some(joined) = calls.join_next().await {
        report_call_panic(joined);
    }
    outcome.map(|()| budget_stop)
}

/// A call task that panicked wrote no result: the chunk ends incomplete and
/// is retried, and the panic is logged and counted instead of vanishing.
fn report_call_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        counter!("assay_call_task_panics_total").increment(1);
        let message = crate::jobs::panic_message(&error.into_panic());
        tracing::error!(panic = message, "a call task panicked; its run is retried");
    }
}

/// Reserves the expected cost of one run's call against the evaluation's
/// budgets: `Ok(Ok(dollars reserved))`, or the budget that refused. Nothing
/// is reserved without budgets, for a re-grading's stored output, or for a
/// prompt that does not render (no call is made).
async fn reserve(
    env: &Environment,
    plan: &Plan,
    model_index: usize,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    from_source: bool,
) -> Result<Result<f64, CancelReason>, JobError> {
    let (Some(budget), Ok(messages), false) = (plan.budget, rendered, from_source) else {
        return Ok(Ok(0.0));
    };
    let amount = assay_core::budget::call_cost(&plan.models[model_index], messages, &plan.params)
        .expected_usd;
    let evaluation = &plan.evaluation;
    let mut conn = env.pool.get().await.map_err(JobError::transient)?;
    let reserved = budgets::reserve(
        &mut conn,
        evaluation.tenant_id,
        evaluation.id,
        amount,
        budget.tenant,
    )
    .await
    .map_err(JobError::transient)?;
    if reserved.is_ok() {
        gauge!("assay_budget_reserved_usd").increment(amount);
    }
    Ok(reserved.map(|()| amount))
}

/// Cancels the evaluation for `reason` (once, whichever worker gets there first).
async fn stop_for_budget(
    env: &Environment,
    evaluation: &Evaluation,
    reason: CancelReason,
) -> Result<(), JobError> {
    let mut conn = env.pool.get().await.map_err(JobError::transient)?;
    let canceled = lifecycle::cancel(
        &mut conn,
        evaluation.tenant_id,
        evaluation.id,
        &env.actor(),
        reason,
    )
    .await
    .map_err(JobError::transient)?;
    if canceled {
        let scope = match reason {
            CancelReason::TenantBudget => "tenant",
            _ => "evaluation",
        };
        counter!("assay_budget_stops_total", "scope" => scope).increment(1);
        tracing::warn!(
            reason = reason.as_str(),
            max_cost_usd = evaluation.max_cost_usd,
            "budget reached: evaluation canceled, no new calls"
        );
    }
    Ok(())
}
