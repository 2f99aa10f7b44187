#!/usr/bin/env python3
"""Writes docker/grafana/dashboards/assay.json, the Assay dashboard.

Edit the panels here and run `python3 docker/grafana/dashboard.py`; the JSON
is what Grafana loads (provisioned) and what `make test` checks: its
structure, and that every metric its queries name exists in a live /metrics.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "assay-prometheus"}
panels = []
next_id = 1
cursor = {"x": 0, "y": 0, "h": 0}


def place(w, h):
    if cursor["x"] + w > 24:
        cursor["x"], cursor["y"], cursor["h"] = 0, cursor["y"] + cursor["h"], 0
    pos = {"h": h, "w": w, "x": cursor["x"], "y": cursor["y"]}
    cursor["x"] += w
    cursor["h"] = max(cursor["h"], h)
    return pos


def row(title):
    global next_id
    if cursor["x"]:
        cursor["x"], cursor["y"], cursor["h"] = 0, cursor["y"] + cursor["h"], 0
    panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": cursor["y"]}, "panels": []})
    next_id += 1
    cursor["y"] += 1


def panel(title, kind, targets, unit="short", w=8, h=8, description="", thresholds=None, mappings=None, max_value=None):
    global next_id
    defaults = {"unit": unit}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    if mappings:
        defaults["mappings"] = mappings
    if max_value is not None:
        defaults["max"] = max_value
    if kind == "timeseries" and thresholds:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    panels.append({
        "id": next_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": place(w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    })
    next_id += 1


GREEN_RED = lambda limit: [{"color": "green", "value": None}, {"color": "red", "value": limit}]

row("Work")
panel("Evaluations queued and running", "timeseries",
      [('max by (status) (assay_evaluations_unfinished)', "{{status}}")],
      description="Unfinished evaluations by status, from PostgreSQL (every process reports the same value).")
panel("Work left (chunks)", "timeseries",
      [('sum(max by (state) (assay_chunks_unfinished))', "total"),
       ('max by (state) (assay_chunks_unfinished)', "{{state}}")],
      description="Chunks of unfinished evaluations by state: what autoscaling follows.")
panel("Items per second", "timeseries",
      [('sum(assay_items_per_second)', "all workers"),
       ('sum by (model) (rate(assay_runs_finished_total[2m]))', "{{model}}")],
      unit="ops", description="Results written per second overall, and runs finished per model.")

row("LLM calls")
panel("Calls per second by outcome", "timeseries",
      [('sum by (outcome) (rate(assay_llm_calls_total[2m]))', "{{outcome}}")], unit="reqps")
panel("429s, retries, cool-downs and fallbacks by model", "timeseries",
      [('sum by (model) (rate(assay_llm_calls_total{outcome="rate_limited"}[5m]))', "429 {{model}}"),
       ('sum by (model) (rate(assay_llm_retries_total[5m]))', "retry {{model}}"),
       ('sum by (model) (rate(assay_llm_cool_downs_total[5m]))', "cool-down {{model}}"),
       ('sum by (from) (rate(assay_llm_fallbacks_total[5m]))', "fallback from {{from}}")], unit="reqps")
panel("Circuit state by model", "stat",
      [('max by (model) (assay_llm_circuit_state)', "{{model}}")],
      mappings=[{"type": "value", "options": {"0": {"text": "closed", "color": "green"},
                                               "1": {"text": "half-open", "color": "yellow"},
                                               "2": {"text": "open", "color": "red"}}}],
      thresholds=[{"color": "green", "value": None}, {"color": "yellow", "value": 1}, {"color": "red", "value": 2}],
      description="Worst state over the workers: 0 closed, 1 half-open, 2 open.")
panel("Call latency p50 / p95 / p99 by model", "timeseries",
      [('histogram_quantile(0.5, sum by (model, le) (rate(assay_llm_call_duration_seconds_bucket{outcome="ok"}[5m])))', "p50 {{model}}"),
       ('histogram_quantile(0.95, sum by (model, le) (rate(assay_llm_call_duration_seconds_bucket{outcome="ok"}[5m])))', "p95 {{model}}"),
       ('histogram_quantile(0.99, sum by (model, le) (rate(assay_llm_call_duration_seconds_bucket{outcome="ok"}[5m])))', "p99 {{model}}")],
      unit="s", w=12, description="From the histograms of every replica, summed before the quantile.")
panel("Cost per minute by model and purpose", "timeseries",
      [('sum by (model, purpose) (rate(assay_spend_usd[5m])) * 60', "{{model}} {{purpose}}")],
      unit="currencyUSD", w=12, description="generate: the evaluated models; judge: model-graded graders.")
panel("Response cache hit ratio", "stat",
      [('sum(rate(assay_llm_cache_requests_total{result="hit"}[10m])) / sum(rate(assay_llm_cache_requests_total[10m]))', "hit ratio")],
      unit="percentunit", max_value=1)
panel("Budgets: most used", "stat",
      [('max by (scope) (assay_budget_used_ratio)', "{{scope}}")], unit="percentunit",
      thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.9}, {"color": "red", "value": 1}],
      description="Highest spend / budget among running budgeted evaluations and among tenants this month.")
panel("Budget stops", "timeseries",
      [('sum by (scope) (increase(assay_budget_stops_total[1h]))', "{{scope}}")],
      description="Evaluations canceled for their budget (evaluation) or their tenant's monthly budget (tenant), per hour.")

row("Queues")
panel("Queue depth by priority", "timeseries",
      [('max by (queue, state) (assay_queue_depth{state!="delayed"})', "{{queue}} {{state}}")], w=12)
panel("Age of the oldest queued chunk", "timeseries",
      [('max by (queue) (assay_queue_oldest_age_seconds)', "{{queue}}")], unit="s", w=12,
      thresholds=GREEN_RED(900), description="Alert AssayQueuedChunkTooOld fires above 15 minutes.")

row("Workers")
panel("Workers up", "stat",
      [('count(up{job="assay-worker"} == 1)', "scraped"), ('max(assay_workers_live)', "heartbeating")],
      description="Targets Prometheus scrapes, and workers whose heartbeat Redis has seen.")
panel("Worker memory (RSS)", "timeseries",
      [('assay_process_resident_memory_bytes{job="assay-worker"}', "{{instance}}")], unit="bytes")
panel("LLM permits free", "timeseries",
      [('assay_llm_permits_free', "{{instance}}")], description="0: every permit of the worker is in use.")

row("API")
panel("API requests per second", "timeseries",
      [('sum by (route) (rate(assay_http_requests_total{route=~"/v1/.*"}[5m]))', "{{route}}")], unit="reqps")
panel("API error ratio (5xx)", "timeseries",
      [('assay:api_errors:ratio_rate5m', "5m"), ('assay:api_errors:ratio_rate1h', "1h")],
      unit="percentunit", thresholds=GREEN_RED(0.001), description="The availability SLO allows 0.1%.")
panel("API latency p95 against the 200 ms SLO", "timeseries",
      [('histogram_quantile(0.95, sum by (le) (rate(assay_http_request_duration_seconds_bucket{route=~"/v1/.*"}[5m])))', "p95"),
       ('assay:api_slow:ratio_rate1h', "share slower than 200 ms (1h)")],
      unit="s", thresholds=GREEN_RED(0.2))

dashboard = {
    "uid": "assay-overview",
    "title": "Assay",
    "description": "Assay at a glance: work, LLM calls, cost, queues, workers and the API's SLOs.",
    "tags": ["assay"],
    "timezone": "browser",
    "editable": False,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-3h", "to": "now"},
    "templating": {"list": []},
    "annotations": {"list": []},
    "links": [],
    "panels": panels,
}
out = pathlib.Path(__file__).parent / "dashboards" / "assay.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
