//! `GET /v1/evaluations/{a}/compare/{b}`: a paired comparison of two
//! succeeded evaluations of one dataset, per model pair, computed by
//! [`assay_core::db::models::compare`] (aggregates in SQL, statistics on
//! the aggregates), and the pages of improved and regressed items.

use std::time::Instant;

use actix_web::{HttpResponse, web};
use assay_core::db::models::compare::{self, Direction, Side};
use assay_core::db::models::evaluations::{self, Evaluation, EvaluationStatus};
use assay_core::ids::{DatasetId, EvaluationId, TenantId, VersionId};
use assay_core::stats;
use serde::{Deserialize, Serialize};

use super::PageQuery;
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::startup::AppState;
use assay_core::db::models::compare::ChangePage;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CompareQuery {
    /// `a_model:b_model[,a_model:b_model...]`; default: models of the same name.
    models: Option<String>,
    /// Items per improvements/regressions list (default 100).
    limit: Option<i64>,
}

/// Splits `a_model:b_model` where the left side is a model of `a` and the
/// right one a model of `b` (model names may contain `:` themselves).
fn split_pair(pair: &str, a: &[String], b: &[String]) -> Result<(String, String), ApiError> {
    let splits: Vec<(String, String)> = pair
        .match_indices(':')
        .map(|(at, _)| (pair[..at].to_owned(), pair[at + 1..].to_owned()))
        .filter(|(left, right)| a.contains(left) && b.contains(right))
        .collect();
    match splits.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::InvalidQuery(format!(
            "{pair:?} is not a_model:b_model with a model of each evaluation (a: {}; b: {})",
            a.join(", "),
            b.join(", ")
        ))),
        _ => Err(ApiError::InvalidQuery(format!(
            "{pair:?} can be split into models of both evaluations in more than one way"
        ))),
    }
}

fn pairs(
    models: Option<&str>,
    a: &Evaluation,
    b: &Evaluation,
) -> Result<Vec<(String, String)>, ApiError> {
    let (a_models, b_models) = (a.model_names(), b.model_names());
    let pairs = match models {
        Some(models) => models
            .split(',')
            .map(|pair| split_pair(pair.trim(), &a_models, &b_models))
            .collect::<Result<Vec<_>, _>>()?,
        None => a_models
            .iter()
            .filter(|model| b_models.contains(model))
            .map(|model| (model.clone(), model.clone()))
            .collect(),
    };
    if pairs.is_empty() {
        return Err(ApiError::InvalidQuery(
            "the evaluations share no model name: pair them with ?models=a_model:b_model"
                .to_owned(),
        ));
    }
    Ok(pairs)
}

/// Both evaluations, checked to be comparable.
async fn comparable(
    state: &AppState,
    tenant_id: TenantId,
    a: EvaluationId,
    b: EvaluationId,
) -> Result<(Evaluation, Evaluation), ApiError> {
    let mut conn = state.pool.get().await?;
    let a = evaluations::get(&mut conn, tenant_id, a)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    let b = evaluations::get(&mut conn, tenant_id, b)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    for evaluation in [&a, &b] {
        if evaluation.status != EvaluationStatus::Succeeded {
            return Err(ApiError::Conflict(format!(
                "only succeeded evaluations can be compared; {} is {}",
                evaluation.id, evaluation.status
            )));
        }
    }
    if a.dataset_id != b.dataset_id {
        return Err(ApiError::Conflict(format!(
            "the evaluations ran on different datasets ({} and {}): items cannot be paired",
            a.dataset_id, b.dataset_id
        )));
    }
    Ok((a, b))
}

fn list_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    PageQuery { after: None, limit }.limit()
}

/// `GET /v1/evaluations/{a}/compare/{b}`.
#[tracing::instrument(skip_all, fields(evaluation.a = %path.0, evaluation.b = %path.1))]
#[utoipa::path(
    get,
    operation_id = "compare.compare",
    path = "/v1/evaluations/{a}/compare/{b}",
    tag = "evaluations",
    params(("a" = Uuid, Path, description = "Baseline evaluation id"), ("b" = Uuid, Path, description = "Candidate evaluation id"), CompareQuery),
    responses(
        (status = 200, description = "Paired comparison per model pair", body = CompareBody),
        (status = 409, description = "Not both succeeded, or not the same dataset"),
    ),
)]
pub async fn compare(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(EvaluationId, EvaluationId)>,
    query: web::Query<CompareQuery>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = async {
        let limit = list_limit(query.limit)?;
        let (a, b) = comparable(&state, caller.tenant_id, path.0, path.1).await?;
        let pairs = pairs(query.models.as_deref(), &a, &b)?;
        let mut conn = state.pool.get().await?;
        let mut reports = Vec::with_capacity(pairs.len());
        for (a_model, b_model) in &pairs {
            reports.push(
                compare::compare_pair(
                    &mut conn,
                    caller.tenant_id,
                    &Side {
                        evaluation_id: a.id,
                        model: a_model,
                    },
                    &Side {
                        evaluation_id: b.id,
                        model: b_model,
                    },
                    limit,
                )
                .await?,
            );
        }
        Ok::<_, ApiError>(CompareBody {
            a: CompareSide::of(&a),
            b: CompareSide::of(&b),
            dataset_id: a.dataset_id,
            method: serde_json::json!({
                "pairing": "by item; an item counts on a side when it has at least one graded (passed or failed) run there",
                "bootstrap_resamples": stats::BOOTSTRAP_RESAMPLES,
                "bootstrap_seed": stats::BOOTSTRAP_SEED,
                "confidence": stats::CONFIDENCE,
            }),
            pairs: reports,
        })
    }
    .await;
    let outcome = if result.is_ok() { "ok" } else { "refused" };
    metrics::counter!("assay_evaluation_compare_requests_total", "outcome" => outcome).increment(1);
    metrics::histogram!("assay_evaluation_compare_duration_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok().json(result?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// `improvements` or `regressions`.
    direction: String,
    /// `a_model:b_model`; may be left out when the evaluations share one model.
    pair: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/evaluations/{a}/compare/{b}/changes`: one page of improved or
/// regressed items of a model pair; `after` is the last position of the
/// previous page (the `next_after` of the comparison's lists).
#[utoipa::path(
    get,
    operation_id = "compare.changes",
    path = "/v1/evaluations/{a}/compare/{b}/changes",
    tag = "evaluations",
    params(("a" = Uuid, Path, description = "Baseline evaluation id"), ("b" = Uuid, Path, description = "Candidate evaluation id"), ChangesQuery),
    responses(
        (status = 200, description = "A page of improved or regressed items", body = ChangePage),
        (status = 409, description = "Not both succeeded, or not the same dataset"),
    ),
)]
pub async fn changes(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(EvaluationId, EvaluationId)>,
    query: web::Query<ChangesQuery>,
) -> Result<HttpResponse, ApiError> {
    let direction = match query.direction.as_str() {
        "improvements" => Direction::Improvements,
        "regressions" => Direction::Regressions,
        _ => {
            return Err(ApiError::InvalidQuery(
                "direction must be improvements or regressions".to_owned(),
            ));
        }
    };
    let page_query = PageQuery {
        after: query.after.clone(),
        limit: query.limit,
    };
    let limit = page_query.limit()?;
    let after = page_query.after_number("an item position from a previous page")?;
    let (a, b) = comparable(&state, caller.tenant_id, path.0, path.1).await?;
    let pairs = pairs(query.pair.as_deref(), &a, &b)?;
    let [(a_model, b_model)] = pairs.as_slice() else {
        return Err(ApiError::InvalidQuery(
            "name one model pair with ?pair=a_model:b_model".to_owned(),
        ));
    };
    let (a_side, b_side) = (
        Side {
            evaluation_id: a.id,
            model: a_model,
        },
        Side {
            evaluation_id: b.id,
            model: b_model,
        },
    );
    let mut conn = state.pool.get().await?;
    let page = compare::changes(
        &mut conn,
        caller.tenant_id,
        &a_side,
        &b_side,
        direction,
        after,
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// One side of a comparison.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CompareSide {
    id: EvaluationId,
    prompt_version_id: VersionId,
    models: serde_json::Value,
    repeat: i32,
}

impl CompareSide {
    fn of(evaluation: &Evaluation) -> Self {
        Self {
            id: evaluation.id,
            prompt_version_id: evaluation.prompt_version_id,
            models: evaluation.models.clone(),
            repeat: evaluation.repeats,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CompareBody {
    a: CompareSide,
    b: CompareSide,
    dataset_id: DatasetId,
    /// How items were paired and the bootstrap's settings.
    method: serde_json::Value,
    /// One report per model pair.
    pairs: Vec<compare::PairReport>,
}
