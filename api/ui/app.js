// Assay's web viewer: routes by path under /ui/, reads everything from the
// public /v1 API, and builds the page with DOM calls (no HTML strings).

import { api, events, session, query, ApiError } from './api.js';
import { h, pct, usd, ms, num, score, pValue, date, shortId, truncate, wordDiff, diffNodes } from './format.js';
import { passRateChart, latencyHistogram, costChart, versionGraph } from './charts.js';

const app = document.getElementById('app');
const RESULTS_PAGE = 50;
const LIST_PAGE = 25;
const TERMINAL = ['succeeded', 'failed', 'canceled'];

let current = null; // the AbortController of the page on screen

class NotFound extends Error {}

// ---- navigation -------------------------------------------------------------

function navigate(path) {
  history.pushState(null, '', path);
  route();
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[href^="/ui/"], a[href="/ui"]');
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(link.getAttribute('href'));
});
window.addEventListener('popstate', () => route());

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  navigate('/ui/');
});

const flat = (...items) => items.flat(Infinity).filter((item) => item !== '' && item !== null && item !== undefined && item !== false);

function show(page, ...nodes) {
  app.replaceChildren(...flat(nodes));
  app.dataset.page = page;
}

// The page's first screen is on: marked for the Performance API (the
// viewer benchmark reads it) and for tests.
function ready() {
  app.dataset.state = 'ready';
  performance.mark(`assay:ready:${app.dataset.page}`);
}

const ROUTES = [
  [/^\/ui\/?$/, evaluationsPage],
  [/^\/ui\/evaluations\/([0-9a-f-]{36})\/?$/, evaluationPage],
  [/^\/ui\/evaluations\/([0-9a-f-]{36})\/results\/?$/, resultsPage],
  [/^\/ui\/compare\/?$/, comparePage],
  [/^\/ui\/prompts\/?$/, promptsPage],
  [/^\/ui\/prompts\/([0-9a-f-]{36})\/?$/, promptPage],
];

async function route(signInError) {
  if (current) current.abort();
  current = new AbortController();
  app.dataset.state = 'loading';
  const signedIn = Boolean(session.key);
  document.getElementById('sign-out').hidden = !signedIn;
  document.getElementById('nav-links').hidden = !signedIn;
  if (!signedIn) {
    signInPage(signInError);
    return;
  }
  const path = location.pathname;
  const match = ROUTES.map(([pattern, render]) => [path.match(pattern), render]).find(([found]) => found);
  try {
    if (!match) throw new NotFound();
    await match[1](...match[0].slice(1), current.signal);
  } catch (error) {
    if (error.name === 'AbortError') return;
    if (error instanceof ApiError && error.status === 401) {
      session.clear();
      route('The API refused this key: it is wrong or has been revoked. Sign in with a valid key.');
      return;
    }
    if (error instanceof NotFound || (error instanceof ApiError && error.status === 404)) {
      show('not-found', h('h1', { id: 'not-found' }, 'Not found'),
        h('p', { class: 'muted' }, 'Nothing here for this key: it does not exist, or it belongs to another tenant.'),
        h('p', {}, h('a', { href: '/ui/' }, 'Back to evaluations')));
      ready();
      return;
    }
    show('error', h('h1', {}, 'Something went wrong'),
      h('p', { class: 'problem', role: 'alert' }, error.message || String(error)));
    ready();
  }
}

// ---- sign-in ------------------------------------------------------------------

function signInPage(message) {
  const input = h('input', { id: 'api-key', name: 'key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { id: 'signin-error', class: 'problem', role: 'alert', hidden: !message }, message || '');
  const form = h('form', { id: 'signin', class: 'card narrow' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'Paste an API key (assay-api keys create). It stays in this tab only and is sent as a bearer header.'),
    h('label', { for: 'api-key' }, 'API key'), input,
    h('button', { type: 'submit' }, 'Sign in'), error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    session.set(key);
    try {
      await api('/v1/evaluations?limit=1');
      route();
    } catch (failure) {
      session.clear();
      error.hidden = false;
      error.textContent = failure instanceof ApiError && failure.status === 401
        ? 'The API refused this key: it is wrong or has been revoked.'
        : `Could not sign in: ${failure.message}`;
    }
  });
  show('signin', form);
  input.focus();
  ready();
}

// ---- shared pieces --------------------------------------------------------------

function badge(status) {
  return h('span', { class: `badge status-${status}`, 'data-status': status }, status);
}

function progressBar(done, total, id) {
  const bar = h('progress', { id, max: Math.max(1, total), value: done });
  return bar;
}

// Arrow keys (or j/k) move between rows, Enter opens one.
function keyboardRows(table, open) {
  const rows = () => [...table.tBodies[0].rows];
  for (const row of rows()) row.tabIndex = 0;
  table.addEventListener('keydown', (event) => {
    const row = event.target.closest('tr');
    if (!row || !row.parentElement || row.parentElement.tagName !== 'TBODY') return;
    const all = rows();
    const index = all.indexOf(row);
    if (event.key === 'ArrowDown' || event.key === 'j') {
      all[Math.min(all.length - 1, index + 1)].focus();
      event.preventDefault();
    } else if (event.key === 'ArrowUp' || event.key === 'k') {
      all[Math.max(0, index - 1)].focus();
      event.preventDefault();
    } else if (event.key === 'Enter') {
      open(row);
      event.preventDefault();
    }
  });
  table.addEventListener('click', (event) => {
    const row = event.target.closest('tbody tr');
    if (row && !event.target.closest('a, button')) open(row);
  });
}

function table(id, headings, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', { id },
      h('thead', {}, h('tr', {}, headings.map((heading) => h('th', { scope: 'col' }, heading)))),
      h('tbody', {}, rows)));
}

function passRateOf(counts) {
  const graded = counts.completed;
  return graded ? counts.passed / graded : null;
}

function costOf(evaluation) {
  const summary = evaluation.summary;
  if (summary && summary.total_cost_usd !== undefined) {
    return summary.total_cost_usd + (summary.total_grading_cost_usd ?? 0);
  }
  return evaluation.committed_usd;
}

// ---- evaluations list ---------------------------------------------------------------

async function evaluationsPage(signal) {
  const after = new URLSearchParams(location.search).get('after');
  const heading = h('h1', {}, 'Evaluations');
  const holder = h('div', {});
  const pager = h('nav', { class: 'pager' });
  show('evaluations', heading, holder, pager);
  const load = async () => {
    const page = await api(`/v1/evaluations${query({ limit: LIST_PAGE, after })}`, { signal });
    const rows = page.data.map((evaluation) =>
      h('tr', { 'data-id': evaluation.id, 'data-status': evaluation.status },
        h('td', {}, h('a', { href: `/ui/evaluations/${evaluation.id}` }, shortId(evaluation.id))),
        h('td', {}, badge(evaluation.status)),
        h('td', { class: 'progress-cell' },
          progressBar(evaluation.counts.completed, evaluation.counts.total),
          h('span', { class: 'progress-text' }, `${num(evaluation.counts.completed)} / ${num(evaluation.counts.total)}`)),
        h('td', { class: 'num' }, pct(passRateOf(evaluation.counts))),
        h('td', { class: 'num' }, usd(costOf(evaluation))),
        h('td', {}, date(evaluation.created_at))));
    const view = page.data.length
      ? table('evaluations', ['Evaluation', 'Status', 'Progress', 'Pass rate', 'Cost', 'Created'], rows)
      : h('p', { class: 'muted' }, 'No evaluations yet.');
    holder.replaceChildren(view);
    if (page.data.length) {
      keyboardRows(view.querySelector('table'), (row) => navigate(`/ui/evaluations/${row.dataset.id}`));
    }
    pager.replaceChildren(
      after ? h('a', { href: '/ui/' }, '← Newest') : '',
      page.next_after ? h('a', { href: `/ui/${query({ after: page.next_after })}`, id: 'older' }, 'Older →') : '');
    return page.data.some((evaluation) => !TERMINAL.includes(evaluation.status));
  };
  let live = await load();
  ready();
  // Running evaluations update in place: the page is re-read while any is.
  while (live && !signal.aborted) {
    await sleep(2000, signal);
    live = await load();
  }
}

function sleep(millis, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, millis);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('aborted', 'AbortError'));
    }, { once: true });
  });
}

// ---- one evaluation ------------------------------------------------------------------

async function evaluationPage(id, signal) {
  // Asked for at once, beside the evaluation, rather than after it: one
  // round trip less before the first screen. Dropped if the evaluation has
  // no summary to draw it in.
  const latencyAbort = new AbortController();
  signal.addEventListener('abort', () => latencyAbort.abort(), { once: true });
  const latencyRequest = api(`/v1/evaluations/${id}/latency?buckets=24`, { signal: latencyAbort.signal });
  latencyRequest.catch(() => {});
  let evaluation;
  try {
    evaluation = await api(`/v1/evaluations/${id}`, { signal });
  } catch (error) {
    latencyAbort.abort();
    throw error;
  }
  if (!(evaluation.summary && evaluation.summary.models)) latencyAbort.abort();
  const counts = evaluation.counts;
  const status = badge(evaluation.status);
  status.id = 'status';
  const bar = progressBar(counts.completed, counts.total, 'progress');
  const progressText = h('span', { id: 'progress-text' }, `${num(counts.completed)} / ${num(counts.total)}`);
  const liveFigures = h('span', { id: 'live-figures', class: 'muted' },
    `passed ${num(counts.passed)} · failed ${num(counts.failed)} · errored ${num(counts.errored)}`);
  const actions = h('div', { class: 'actions' });
  const actionError = h('p', { class: 'problem', role: 'alert', hidden: true });
  const act = (name, label, enabled) =>
    h('button', {
      type: 'button', id: `action-${name}`, disabled: !enabled,
      onclick: async () => {
        try {
          await api(`/v1/evaluations/${id}/${name}`, { method: 'POST' });
          route();
        } catch (failure) {
          actionError.hidden = false;
          actionError.textContent = failure.message;
        }
      },
    }, label);
  const terminal = TERMINAL.includes(evaluation.status);
  actions.append(
    act('cancel', 'Cancel', !terminal),
    act('resume', 'Resume', ['failed', 'canceled'].includes(evaluation.status)),
    act('retry-errors', 'Retry errors', terminal && counts.errored > 0));
  const models = (evaluation.models || []).map(String);
  show('evaluation',
    h('div', { class: 'title-row' },
      h('h1', {}, 'Evaluation ', h('code', {}, shortId(id))), status),
    h('p', { class: 'muted' },
      `Created ${date(evaluation.created_at)} · run ${evaluation.run} · ${models.length} model(s) · repeat ${evaluation.repeat}`),
    h('p', {},
      h('a', { href: `/ui/evaluations/${id}/results`, id: 'results-link' }, 'Results →'), ' ',
      h('a', { href: `/ui/compare${query({ a: id })}` }, 'Compare…')),
    h('section', { class: 'card' },
      h('h2', {}, 'Progress'),
      h('div', { class: 'progress-line' }, bar, progressText),
      liveFigures,
      h('p', { id: 'live-cost', class: 'muted' }, terminal && evaluation.summary
        ? `cost ${usd(costOf(evaluation))}`
        : `cost so far ${usd((await api(`/v1/evaluations/${id}/progress`, { signal })).cost_usd)}`),
      evaluation.error ? h('p', { class: 'problem' }, evaluation.error) : '',
      actions, actionError),
    await summarySections(evaluation, signal, latencyRequest));
  ready();
  if (!terminal) follow(id, signal, { status, bar, progressText, liveFigures });
}

// Live progress over the events stream; the page re-renders once it ends.
async function follow(id, signal, view) {
  while (!signal.aborted) {
    let finished = false;
    try {
      for await (const event of events(`/v1/evaluations/${id}/events`, signal)) {
        if (event.name === 'progress') {
          const data = event.data;
          view.bar.max = Math.max(1, data.total);
          view.bar.value = data.completed;
          view.progressText.textContent = `${num(data.completed)} / ${num(data.total)}`;
          view.liveFigures.textContent =
            `passed ${num(data.passed)} · failed ${num(data.failed)} · errored ${num(data.errored)}`;
          const cost = document.getElementById('live-cost');
          if (cost) cost.textContent = `cost so far ${usd(data.cost_usd)}`;
          app.dataset.liveUpdates = String(Number(app.dataset.liveUpdates || 0) + 1);
        } else if (event.name === 'status') {
          view.status.textContent = event.data.status;
          view.status.className = `badge status-${event.data.status}`;
          view.status.dataset.status = event.data.status;
        } else if (event.name === 'summary') {
          finished = true;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      await sleep(2000, signal).catch(() => {});
      continue;
    }
    if (finished) {
      route();
      return;
    }
  }
}

async function summarySections(evaluation, signal, latencyRequest = null) {
  const summary = evaluation.summary;
  if (!summary || !summary.models) {
    return h('section', { class: 'card' }, h('h2', {}, 'Summary'),
      h('p', { class: 'muted', id: 'no-summary' }, 'The summary appears when the evaluation has finished.'));
  }
  const models = summary.models;
  const rows = models.map((model) =>
    h('tr', { 'data-model': model.model },
      h('th', { scope: 'row' }, model.model),
      h('td', { class: 'num', 'data-field': 'total' }, num(model.total)),
      h('td', { class: 'num', 'data-field': 'passed' }, num(model.passed)),
      h('td', { class: 'num', 'data-field': 'failed' }, num(model.failed)),
      h('td', { class: 'num', 'data-field': 'errored' }, num(model.errored)),
      h('td', { class: 'num', 'data-field': 'pass_rate' }, pct(model.pass_rate)),
      h('td', { class: 'num', 'data-field': 'mean_score' }, score(model.mean_score)),
      h('td', { class: 'num', 'data-field': 'latency_p50_ms' }, ms(model.latency_p50_ms)),
      h('td', { class: 'num', 'data-field': 'latency_p95_ms' }, ms(model.latency_p95_ms)),
      h('td', { class: 'num' }, `${num(model.input_tokens)} / ${num(model.output_tokens)}`),
      h('td', { class: 'num', 'data-field': 'cost_usd' }, usd(model.cost_usd)),
      h('td', { class: 'num', 'data-field': 'grading_cost_usd' }, usd(model.grading_cost_usd))));
  const latency = await (latencyRequest
    || api(`/v1/evaluations/${evaluation.id}/latency?buckets=24`, { signal }));
  const histogram = latency.histogram;
  return h('div', {},
    h('section', { class: 'card' },
      h('h2', {}, 'Per model'),
      table('summary', ['Model', 'Items', 'Passed', 'Failed', 'Errored', 'Pass rate', 'Mean score', 'p50', 'p95', 'Tokens in / out', 'Generation', 'Grading'], rows),
      h('p', { class: 'muted', id: 'total-cost' },
        `Total cost ${usd((summary.total_cost_usd ?? 0) + (summary.total_grading_cost_usd ?? 0))} (generation ${usd(summary.total_cost_usd)}, grading ${usd(summary.total_grading_cost_usd)})`)),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Pass rate per model'),
        passRateChart(models.map((model) => ({ label: model.model, value: model.pass_rate })), 'Pass rate per model')),
      h('section', { class: 'card' }, h('h2', {}, 'Cost: generation and grading'),
        costChart(models),
        h('p', { class: 'muted' }, h('span', { class: 'key cost-generation-key' }), ' generation ', h('span', { class: 'key cost-grading-key' }), ' grading')),
      h('section', { class: 'card wide' }, h('h2', {}, 'Latency'),
        histogram ? [latencyHistogram(histogram),
          h('p', { class: 'legend-row' }, histogram.models.map((model, index) => legendItem(index, model.model)))]
          : h('p', { class: 'muted' }, 'No answered calls.'))),
    graderSection(summary));
}

function legendItem(index, name) {
  return h('span', { class: 'legend-item' }, h('span', { class: `key series-key-${index % 6}` }), ` ${name}`);
}

function graderSummariesOf(summary) {
  return summary.grader_summaries || summary.graders_summary || [];
}

function graderSection(summary) {
  const graders = graderSummariesOf(summary);
  if (!graders.length) return '';
  return h('section', { class: 'card' }, h('h2', {}, 'Graders'),
    table('graders', ['Grader', 'Model', 'Passed', 'Failed', 'Errors', 'Pass rate', 'Mean score'],
      graders.map((grader) => h('tr', {},
        h('td', {}, `${grader.index ?? ''} ${grader.type ?? grader.grader ?? ''}${grader.source === 'item' ? ' (item)' : ''}`),
        h('td', {}, grader.model),
        h('td', { class: 'num' }, num(grader.passed)),
        h('td', { class: 'num' }, num(grader.failed)),
        h('td', { class: 'num' }, num(grader.errors)),
        h('td', { class: 'num' }, pct(grader.pass_rate)),
        h('td', { class: 'num' }, score(grader.mean_score))))));
}

// ---- results -----------------------------------------------------------------------------

function graderName(grader, index) {
  return `#${index} ${grader.type}`;
}

async function resultsPage(id, signal) {
  const params = new URLSearchParams(location.search);
  const filters = {
    model: params.get('model') || '',
    status: params.get('status') || '',
    failed_grader: params.get('failed_grader') || '',
    q: params.get('q') || '',
  };
  const after = params.get('after');
  // Both at once: neither needs the other.
  const [evaluation, page] = await Promise.all([
    api(`/v1/evaluations/${id}`, { signal }),
    api(`/v1/evaluations/${id}/results${query({ ...filters, after, limit: RESULTS_PAGE, vars: 'true' })}`, { signal }),
  ]);
  const graders = evaluation.graders || [];
  const select = (name, label, options) =>
    h('label', {}, label,
      h('select', { id: `filter-${name}`, name },
        options.map(([value, text]) => h('option', { value, selected: filters[name] === String(value) }, text))));
  const form = h('form', { id: 'filters', class: 'filters' },
    select('model', 'Model', [['', 'all'], ...(evaluation.models || []).map((model) => [model, model])]),
    select('status', 'Status', [['', 'any'], ['passed', 'passed'], ['failed', 'failed'], ['errored', 'errored']]),
    select('failed_grader', 'Grader failed', [['', 'any'], ...graders.map((grader, index) => [String(index), graderName(grader, index)])]),
    h('label', {}, 'Search', h('input', { id: 'filter-q', name: 'q', type: 'search', value: filters.q, maxlength: 200, placeholder: 'text in output or vars' })),
    h('button', { type: 'submit', id: 'apply-filters' }, 'Apply'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    navigate(`/ui/evaluations/${id}/results${query(data)}`);
  });
  const showRepeat = evaluation.repeat > 1;
  const rows = page.data.map((result, index) =>
    h('tr', { 'data-index': index, 'data-status': result.status, 'data-model': result.model },
      h('td', { class: 'num' }, result.item_position),
      h('td', {}, truncate(result.item_key, 24)),
      h('td', {}, truncate(result.model, 28)),
      showRepeat ? h('td', { class: 'num' }, result.repeat_index) : '',
      h('td', { class: 'vars' }, truncate(varsText(result.vars), 80)),
      h('td', { class: 'output' }, truncate(result.output ?? result.error ?? '', 120)),
      h('td', {}, badge(result.status)),
      h('td', { class: 'num' }, score(result.score)),
      h('td', { class: 'verdicts' }, (result.grades || []).map((grade) =>
        h('span', { class: grade.passed ? 'verdict pass' : 'verdict fail', title: `${grade.grader}: ${grade.reason}` }, grade.passed ? '✓' : '✗')))));
  const headings = ['#', 'Item', 'Model', ...(showRepeat ? ['Repeat'] : []), 'Vars', 'Output', 'Status', 'Score', 'Graders'];
  const record = h('section', { id: 'record', class: 'card', hidden: true, tabindex: -1 });
  const view = page.data.length
    ? table('results', headings, rows)
    : h('p', { class: 'muted', id: 'no-results' }, 'No results match.');
  const base = `/ui/evaluations/${id}/results`;
  show('results',
    h('div', { class: 'title-row' }, h('h1', {}, 'Results'),
      h('a', { href: `/ui/evaluations/${id}` }, `← Evaluation ${shortId(id)}`)),
    form,
    h('p', { class: 'muted', id: 'results-count', 'data-count': page.data.length },
      `${num(page.data.length)} row(s) on this page${page.has_more ? ', more follow' : ''}. ↑/↓ or j/k to move, Enter to open.`),
    view,
    h('nav', { class: 'pager' },
      after ? h('a', { href: `${base}${query(filters)}` }, '← First page') : '',
      page.next_after ? h('a', { id: 'next-page', href: `${base}${query({ ...filters, after: page.next_after })}` }, 'Next page →') : ''),
    record);
  if (page.data.length) {
    keyboardRows(view.querySelector('table'), (row) => openRecord(record, evaluation, page.data[Number(row.dataset.index)], signal));
  }
  ready();
}

function varsText(vars) {
  if (!vars) return '';
  return Object.entries(vars).map(([name, value]) => `${name}=${typeof value === 'string' ? value : JSON.stringify(value)}`).join(' ');
}

// Fills `{{ name }}` and `{{ name.field }}` with the item's variables, for
// reading; other template syntax is shown as written.
function fillTemplate(template, vars, expected) {
  return template.replace(/\{\{\s*([A-Za-z_][\w.]*)\s*\}\}/g, (whole, path) => {
    const [head, ...rest] = path.split('.');
    let value = head === 'expected' && !(head in (vars || {})) ? expected : vars?.[head];
    for (const part of rest) value = value?.[part];
    if (value === undefined) return whole;
    return typeof value === 'string' ? value : JSON.stringify(value);
  });
}

async function openRecord(record, evaluation, result, signal) {
  record.hidden = false;
  record.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  let messages = [];
  if (evaluation.prompt_id) {
    const version = await api(`/v1/prompts/${evaluation.prompt_id}/versions/${evaluation.prompt_version_id}`, { signal });
    messages = version.messages || [];
  }
  const field = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
  record.replaceChildren(...flat(
    h('div', { class: 'title-row' },
      h('h2', {}, `Item ${result.item_key} · ${result.model}${evaluation.repeat > 1 ? ` · repeat ${result.repeat_index}` : ''}`),
      h('button', { type: 'button', id: 'close-record', onclick: () => { record.hidden = true; } }, 'Close')),
    h('dl', { class: 'facts' },
      field('Status', badge(result.status)),
      field('Score', score(result.score)),
      field('Latency', ms(result.latency_ms)),
      field('Tokens', `${num(result.input_tokens)} in (${num(result.cached_tokens)} cached) / ${num(result.output_tokens)} out`),
      field('Cost', `${usd(result.cost_usd)} generation + ${usd(result.grading_cost_usd)} grading`),
      field('Attempts', num(result.attempts)),
      field('Answered by', result.answered_by ?? '–'),
      field('From cache', result.cached ? 'yes' : 'no'),
      field('Finish reason', result.finish_reason ?? '–')),
    h('h3', {}, 'Messages'),
    h('p', { class: 'muted' }, 'The prompt version\u2019s templates with this item\u2019s variables filled in.'),
    messages.map((message) => h('div', { class: `message role-${message.role}` },
      h('div', { class: 'role' }, message.role),
      h('pre', {}, fillTemplate(message.content, result.vars, undefined)))),
    h('h3', {}, 'Variables'), h('pre', { id: 'record-vars' }, JSON.stringify(result.vars ?? {}, null, 2)),
    h('h3', {}, 'Output'), h('pre', { id: 'record-output' }, result.output ?? ''),
    result.error ? [h('h3', {}, 'Error'), h('pre', { class: 'problem' }, result.error)] : '',
    h('h3', {}, 'Grades'),
    table('record-grades', ['Grader', 'Source', 'Verdict', 'Score', 'Reason'],
      (result.grades || []).map((grade) => h('tr', {},
        h('td', {}, grade.grader),
        h('td', {}, grade.source ?? 'evaluation'),
        h('td', {}, grade.passed ? 'passed' : 'failed'),
        h('td', { class: 'num' }, score(grade.score)),
        h('td', {}, grade.error ? `${grade.reason} (${grade.error})` : grade.reason))))));
  record.focus();
}

// ---- compare ------------------------------------------------------------------------------

async function comparePage(signal) {
  const params = new URLSearchParams(location.search);
  const [a, b] = [params.get('a') || '', params.get('b') || ''];
  const list = await api(`/v1/evaluations?limit=100`, { signal });
  const choices = list.data.filter((evaluation) => evaluation.status === 'succeeded');
  const picker = (name, chosen) => h('label', {}, name.toUpperCase(),
    h('select', { id: `compare-${name}`, name },
      h('option', { value: '' }, '—'),
      choices.map((evaluation) => h('option', { value: evaluation.id, selected: evaluation.id === chosen },
        `${shortId(evaluation.id)} · ${date(evaluation.created_at)} · ${(evaluation.models || []).join(', ')}`))));
  const form = h('form', { id: 'compare-form', class: 'filters' }, picker('a', a), picker('b', b),
    h('button', { type: 'submit' }, 'Compare'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    navigate(`/ui/compare${query(Object.fromEntries(new FormData(form)))}`);
  });
  const body = h('div', {});
  show('compare', h('h1', {}, 'Compare two evaluations'), form, body);
  if (!a || !b) {
    body.append(h('p', { class: 'muted' }, 'Pick two succeeded evaluations of the same dataset.'));
    ready();
    return;
  }
  let comparison;
  try {
    comparison = await api(`/v1/evaluations/${a}/compare/${b}?limit=50`, { signal });
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      body.append(h('p', { class: 'problem', role: 'alert' }, error.message));
      ready();
      return;
    }
    throw error;
  }
  const pairs = comparison.pairs;
  body.append(
    h('section', { class: 'card' }, h('h2', {}, 'Pass rates'),
      table('compare-rates', ['A model', 'B model', 'Paired items', 'A', 'B', 'Difference', '95% CI', 'McNemar p', 'Score difference (95% CI)'],
        pairs.map((pair) => h('tr', {},
          h('td', {}, pair.a_model), h('td', {}, pair.b_model),
          h('td', { class: 'num' }, num(pair.items.paired)),
          h('td', { class: 'num', 'data-field': 'a' }, pct(pair.pass_rate.a)),
          h('td', { class: 'num', 'data-field': 'b' }, pct(pair.pass_rate.b)),
          h('td', { class: 'num' }, signedPct(pair.pass_rate.difference)),
          h('td', { class: 'num' }, interval(pair.pass_rate.ci95, signedPct)),
          h('td', { class: 'num', 'data-field': 'p' }, pValue(pair.significance.p_value)),
          h('td', { class: 'num' }, pair.score ? `${signedScore(pair.score.difference)} (${interval(pair.score.ci95, signedScore)})` : '–')))),
      passRateChart(pairs.flatMap((pair) => [
        { label: `A ${pair.a_model}`, value: pair.pass_rate.a, className: 'bar side-a' },
        { label: `B ${pair.b_model}`, value: pair.pass_rate.b, className: 'bar side-b' },
      ]), 'Pass rates side by side')));
  const changes = h('tbody', {});
  for (const pair of pairs) {
    for (const direction of ['regressions', 'improvements']) {
      const items = pair[direction].items;
      if (!items.length) continue;
      const positions = items.map((item) => item.position).join(',');
      const [left, right] = await Promise.all([
        api(`/v1/evaluations/${a}/results${query({ model: pair.a_model, positions, limit: 1000 })}`, { signal }),
        api(`/v1/evaluations/${b}/results${query({ model: pair.b_model, positions, limit: 1000 })}`, { signal }),
      ]);
      const firstOutput = (page) => new Map([...page.data].reverse().map((row) => [row.item_position, row]));
      const [leftRows, rightRows] = [firstOutput(left), firstOutput(right)];
      for (const item of items) {
        const [x, y] = [leftRows.get(item.position), rightRows.get(item.position)];
        const parts = wordDiff(x?.output ?? '', y?.output ?? '');
        changes.append(h('tr', { 'data-direction': direction, 'data-position': item.position },
          h('td', {}, h('span', { class: `badge ${direction === 'regressions' ? 'status-failed' : 'status-succeeded'}` },
            direction === 'regressions' ? 'regressed' : 'improved')),
          h('td', {}, item.item_key),
          h('td', {}, pair.a_model === pair.b_model ? pair.a_model : `${pair.a_model} → ${pair.b_model}`),
          h('td', { class: 'num' }, `${pct(item.a)} → ${pct(item.b)}`),
          h('td', { class: 'output diff' }, diffNodes(parts, 'a')),
          h('td', { class: 'output diff' }, diffNodes(parts, 'b'))));
      }
    }
  }
  const totalChanged = pairs.reduce((sum, pair) => sum + pair.regressions.count + pair.improvements.count, 0);
  body.append(h('section', { class: 'card' },
    h('h2', {}, 'Items whose outcome differs'),
    h('p', { class: 'muted', id: 'changes-count', 'data-count': totalChanged },
      `${num(totalChanged)} item(s) changed: ${pairs.map((pair) => `${num(pair.regressions.count)} regressed, ${num(pair.improvements.count)} improved`).join('; ')}. Regressions first; the first 50 of each are shown.`),
    changes.children.length
      ? h('div', { class: 'table-wrap' }, h('table', { id: 'changes' },
        h('thead', {}, h('tr', {}, ['Change', 'Item', 'Model', 'Pass A → B', 'Output A', 'Output B'].map((text) => h('th', {}, text)))),
        changes))
      : h('p', { class: 'muted' }, 'No item changed outcome.')));
  ready();
}

const signedPct = (value) => (value === null || value === undefined ? '–' : `${value > 0 ? '+' : ''}${(value * 100).toFixed(1)} pt`);
const signedScore = (value) => (value === null || value === undefined ? '–' : `${value > 0 ? '+' : ''}${value.toFixed(3)}`);
function interval(ci, format) {
  if (!ci) return '–';
  const low = ci.low ?? ci.lower ?? ci[0];
  const high = ci.high ?? ci.upper ?? ci[1];
  return `${format(low)} … ${format(high)}`;
}

// ---- prompts ------------------------------------------------------------------------------

async function promptsPage(signal) {
  const page = await api('/v1/prompts?limit=100', { signal });
  const rows = page.data.map((prompt) => h('tr', { 'data-id': prompt.id },
    h('td', {}, h('a', { href: `/ui/prompts/${prompt.id}` }, prompt.name)),
    h('td', {}, truncate(prompt.description ?? '', 80)),
    h('td', {}, date(prompt.created_at))));
  const view = page.data.length ? table('prompts', ['Name', 'Description', 'Created'], rows)
    : h('p', { class: 'muted' }, 'No prompts yet.');
  show('prompts', h('h1', {}, 'Prompts'), view);
  if (page.data.length) keyboardRows(view.querySelector('table'), (row) => navigate(`/ui/prompts/${row.dataset.id}`));
  ready();
}

async function promptPage(id, signal) {
  const [prompt, versions, branches, labels] = await Promise.all([
    api(`/v1/prompts/${id}`, { signal }),
    api(`/v1/prompts/${id}/versions?limit=200`, { signal }),
    api(`/v1/prompts/${id}/branches?limit=100`, { signal }),
    api(`/v1/prompts/${id}/labels?limit=100`, { signal }),
  ]);
  const numbers = versions.data.map((version) => version.version);
  const params = new URLSearchParams(location.search);
  const from = params.get('from') || String(numbers.length > 1 ? numbers[1] : numbers[0] ?? '');
  const to = params.get('to') || String(numbers[0] ?? '');
  const picker = (name, chosen) => h('label', {}, name,
    h('select', { id: `diff-${name}`, name }, numbers.map((number) =>
      h('option', { value: number, selected: String(number) === chosen }, `v${number}`))));
  const form = h('form', { id: 'diff-form', class: 'filters' }, picker('from', from), picker('to', to),
    h('button', { type: 'submit' }, 'Diff'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    navigate(`/ui/prompts/${id}${query(Object.fromEntries(new FormData(form)))}`);
  });
  const diffView = h('div', { id: 'diff' });
  show('prompt',
    h('div', { class: 'title-row' }, h('h1', {}, prompt.name), h('a', { href: '/ui/prompts' }, '← Prompts')),
    prompt.description ? h('p', { class: 'muted' }, prompt.description) : '',
    h('section', { class: 'card' }, h('h2', {}, 'Versions, branches and labels'),
      versionGraph(versions.data, branches.data, labels.data),
      versions.has_more ? h('p', { class: 'muted' }, 'The 200 newest versions are drawn.') : ''),
    h('section', { class: 'card' }, h('h2', {}, 'Versions'),
      table('versions', ['Version', 'Message', 'Hash', 'Created'], versions.data.map((version) => h('tr', {},
        h('td', {}, `v${version.version}`),
        h('td', {}, truncate(version.commit_message, 80)),
        h('td', {}, h('code', {}, version.content_hash.slice(0, 10))),
        h('td', {}, date(version.created_at)))))),
    h('section', { class: 'card' }, h('h2', {}, 'Diff'), form, diffView));
  if (from && to) {
    const diff = await api(`/v1/prompts/${id}/diff${query({ from, to })}`, { signal });
    diffView.append(
      h('p', { class: 'muted' }, `v${diff.from.version} → v${diff.to.version}`,
        diff.common_ancestor ? ` · common ancestor v${diff.common_ancestor.version}` : ''),
      ...diff.messages.map((message) => h('div', { class: `message diff-${message.status}` },
        h('div', { class: 'role' }, `${message.role} · message ${message.index} · ${message.status}`),
        message.diff ? h('pre', {}, message.diff.split('\n').map((line) =>
          h('span', { class: line.startsWith('+') ? 'line-added' : line.startsWith('-') ? 'line-removed' : 'line' }, `${line}\n`))) : '')),
      diff.params.length ? h('pre', { id: 'param-changes' }, JSON.stringify(diff.params, null, 2)) : '');
  }
  ready();
}

route();
