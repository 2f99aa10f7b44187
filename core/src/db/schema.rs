// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        key_hash -> Bytea,
        key_prefix -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        scope -> Text,
        expires_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

diesel::table! {
    dataset_items (dataset_id, position) {
        dataset_id -> Uuid,
        position -> Int4,
        tenant_id -> Uuid,
        item_key -> Text,
        vars -> Jsonb,
        expected -> Nullable<Jsonb>,
        threshold -> Nullable<Float8>,
        graders -> Nullable<Jsonb>,
    }
}

diesel::table! {
    datasets (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        item_count -> Int4,
        variables -> Jsonb,
        all_expected -> Bool,
        created_at -> Timestamptz,
        items_with_graders -> Int4,
        content_hash -> Nullable<Text>,
    }
}

diesel::table! {
    evaluation_chunks (evaluation_id, chunk_index) {
        evaluation_id -> Uuid,
        chunk_index -> Int4,
        tenant_id -> Uuid,
        model -> Text,
        first_position -> Int4,
        last_position -> Int4,
        status -> Text,
        job_id -> Nullable<Uuid>,
        queued_at -> Nullable<Timestamptz>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        starts -> Int4,
        priority -> Text,
        finished_at -> Nullable<Timestamptz>,
        crashes -> Int4,
    }
}

diesel::table! {
    evaluation_results (evaluation_id, item_position, model, repeat_index) {
        evaluation_id -> Uuid,
        model -> Text,
        item_position -> Int4,
        tenant_id -> Uuid,
        item_key -> Text,
        status -> Text,
        output -> Nullable<Text>,
        score -> Nullable<Float8>,
        grades -> Jsonb,
        latency_ms -> Nullable<Int4>,
        input_tokens -> Int4,
        output_tokens -> Int4,
        cost_usd -> Float8,
        attempts -> Int4,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        repeat_index -> Int4,
        finish_reason -> Nullable<Text>,
        grading_cost_usd -> Float8,
        answered_by -> Nullable<Text>,
        cached -> Bool,
        cached_tokens -> Int4,
    }
}

diesel::table! {
    evaluations (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_version_id -> Uuid,
        dataset_id -> Uuid,
        models -> Jsonb,
        graders -> Jsonb,
        params -> Jsonb,
        status -> Text,
        total -> Int4,
        completed -> Int4,
        passed -> Int4,
        failed -> Int4,
        errored -> Int4,
        summary -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        repeats -> Int4,
        threshold -> Nullable<Float8>,
        source_evaluation_id -> Nullable<Uuid>,
        use_cache -> Bool,
        priority -> Text,
        run -> Int4,
        prompt_ref -> Nullable<Jsonb>,
        max_cost_usd -> Nullable<Float8>,
        committed_usd -> Float8,
        cost_estimate -> Nullable<Jsonb>,
        cancel_reason -> Nullable<Text>,
        request_id -> Nullable<Text>,
    }
}

diesel::table! {
    events (id) {
        id -> Int8,
        tenant_id -> Uuid,
        actor -> Text,
        action -> Text,
        resource_type -> Text,
        resource_id -> Uuid,
        data -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (tenant_id, idempotency_key) {
        tenant_id -> Uuid,
        idempotency_key -> Text,
        claim_id -> Uuid,
        status -> Text,
        request_hash -> Nullable<Bytea>,
        response_status -> Nullable<Int4>,
        response_headers -> Nullable<Jsonb>,
        response_body -> Nullable<Bytea>,
        locked_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    optimization_candidates (optimization_id, round, index) {
        optimization_id -> Uuid,
        round -> Int4,
        index -> Int4,
        tenant_id -> Uuid,
        version_id -> Nullable<Uuid>,
        invalid_reason -> Nullable<Text>,
        rationale -> Text,
        evaluation_id -> Nullable<Uuid>,
        pass_rate -> Nullable<Float8>,
        mean_score -> Nullable<Float8>,
        cost_usd -> Nullable<Float8>,
        tokens -> Int8,
    }
}

diesel::table! {
    optimizations (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_id -> Uuid,
        from_version_id -> Uuid,
        setup -> Jsonb,
        optimizer_model -> Text,
        candidates -> Int4,
        rounds -> Int4,
        validation_split -> Float8,
        seed -> Int8,
        max_cost_usd -> Float8,
        promote_to -> Nullable<Text>,
        status -> Text,
        train_dataset_id -> Nullable<Uuid>,
        validation_dataset_id -> Nullable<Uuid>,
        round -> Int4,
        current_version_id -> Uuid,
        parent_train_evaluation_id -> Nullable<Uuid>,
        parent_validation_evaluation_id -> Nullable<Uuid>,
        origin_validation_evaluation_id -> Nullable<Uuid>,
        optimizer_cost_usd -> Float8,
        proposals_valid -> Int4,
        proposals_invalid -> Int4,
        winner_version_id -> Nullable<Uuid>,
        comparison -> Nullable<Jsonb>,
        reason -> Nullable<Text>,
        promotion_id -> Nullable<Uuid>,
        job_id -> Nullable<Uuid>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    promotions (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_id -> Uuid,
        label -> Text,
        candidate_version_id -> Uuid,
        baseline_version_id -> Uuid,
        setup -> Jsonb,
        policy -> Jsonb,
        status -> Text,
        baseline_evaluation_id -> Nullable<Uuid>,
        candidate_evaluation_id -> Nullable<Uuid>,
        baseline_reused -> Bool,
        candidate_reused -> Bool,
        comparison -> Nullable<Jsonb>,
        reason -> Nullable<Text>,
        optimization_id -> Nullable<Uuid>,
        job_id -> Nullable<Uuid>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    prompt_branches (prompt_id, name) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_id -> Uuid,
        name -> Text,
        head_version_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    prompt_labels (prompt_id, name) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_id -> Uuid,
        name -> Text,
        version_id -> Uuid,
        protected -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    prompt_versions (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        prompt_id -> Uuid,
        version -> Int4,
        parent_id -> Nullable<Uuid>,
        messages -> Jsonb,
        params -> Jsonb,
        content_hash -> Text,
        commit_message -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    prompts (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    superseded_results (evaluation_id, run, item_position, model, repeat_index) {
        evaluation_id -> Uuid,
        run -> Int4,
        model -> Text,
        item_position -> Int4,
        repeat_index -> Int4,
        tenant_id -> Uuid,
        item_key -> Text,
        status -> Text,
        output -> Nullable<Text>,
        error -> Nullable<Text>,
        attempts -> Int4,
        cost_usd -> Float8,
        created_at -> Timestamptz,
        superseded_at -> Timestamptz,
    }
}

diesel::table! {
    tenant_budgets (tenant_id) {
        tenant_id -> Uuid,
        monthly_usd -> Float8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    tenant_limits (tenant_id) {
        tenant_id -> Uuid,
        reads_per_minute -> Nullable<Int4>,
        read_burst -> Nullable<Int4>,
        writes_per_minute -> Nullable<Int4>,
        write_burst -> Nullable<Int4>,
        max_runs_per_evaluation -> Nullable<Int4>,
        max_active_evaluations -> Nullable<Int4>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    tenant_spend (tenant_id, month) {
        tenant_id -> Uuid,
        month -> Date,
        committed_usd -> Float8,
    }
}

diesel::table! {
    tenants (id) {
        id -> Uuid,
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        tenant_id -> Uuid,
        started_at -> Timestamptz,
        duration_ms -> Int4,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        webhook_id -> Uuid,
        event_id -> Uuid,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        job_id -> Nullable<Uuid>,
        pushed_at -> Nullable<Timestamptz>,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        event_type -> Text,
        resource_type -> Text,
        resource_id -> Uuid,
        body -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        url -> Text,
        secret -> Text,
        events -> Nullable<Jsonb>,
        evaluation_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(datasets -> tenants (tenant_id));
diesel::joinable!(events -> tenants (tenant_id));
diesel::joinable!(idempotency_keys -> tenants (tenant_id));
diesel::joinable!(optimization_candidates -> optimizations (optimization_id));
diesel::joinable!(prompts -> tenants (tenant_id));
diesel::joinable!(tenant_budgets -> tenants (tenant_id));
diesel::joinable!(tenant_limits -> tenants (tenant_id));
diesel::joinable!(tenant_spend -> tenants (tenant_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(webhook_deliveries -> webhook_events (event_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhooks -> tenants (tenant_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    dataset_items,
    datasets,
    evaluation_chunks,
    evaluation_results,
    evaluations,
    events,
    idempotency_keys,
    optimization_candidates,
    optimizations,
    promotions,
    prompt_branches,
    prompt_labels,
    prompt_versions,
    prompts,
    superseded_results,
    tenant_budgets,
    tenant_limits,
    tenant_spend,
    tenants,
    webhook_attempts,
    webhook_deliveries,
    webhook_events,
    webhooks,
);
