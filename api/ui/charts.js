// Charts as inline SVG. Colours come from the stylesheet (classes), so
// they follow the light or dark theme.

import { s, pct, usd, ms, num } from './format.js';

const WIDTH = 640;
const LABEL = 220;

function label(x, y, text, anchor = 'start', extra = 'chart-label') {
  return s('text', { x, y, 'text-anchor': anchor, class: extra, 'dominant-baseline': 'middle' }, text);
}

// One bar per row: [{label, value (0..1), className?}].
export function passRateChart(rows, title) {
  const row = 28;
  const height = rows.length * row + 10;
  const scale = WIDTH - LABEL - 70;
  return s(
    'svg',
    { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart', role: 'img', 'aria-label': title },
    s('title', {}, title),
    rows.map((item, index) => {
      const y = 5 + index * row;
      const width = Math.max(0, Math.min(1, item.value ?? 0)) * scale;
      return s(
        'g',
        { class: 'bar-row' },
        label(LABEL - 8, y + row / 2 - 2, item.label.length > 30 ? `${item.label.slice(0, 29)}…` : item.label, 'end'),
        s('rect', { x: LABEL, y: y + 4, width: scale, height: row - 12, class: 'bar-track' }),
        s('rect', { x: LABEL, y: y + 4, width, height: row - 12, class: item.className || 'bar' }),
        label(LABEL + scale + 6, y + row / 2 - 2, pct(item.value)),
      );
    }),
  );
}

// Counts per equal-width latency bucket, one series per model (side by side).
export function latencyHistogram(histogram) {
  const height = 200;
  const bottom = 30;
  const left = 40;
  const plotWidth = WIDTH - left - 10;
  const plotHeight = height - bottom - 10;
  const buckets = histogram.models[0]?.counts.length ?? 0;
  const series = histogram.models.length;
  const max = Math.max(1, ...histogram.models.flatMap((model) => model.counts));
  const slot = plotWidth / Math.max(1, buckets);
  const barWidth = Math.max(1, (slot - 2) / Math.max(1, series));
  const bars = [];
  histogram.models.forEach((model, seriesIndex) => {
    model.counts.forEach((count, bucket) => {
      const barHeight = (count / max) * plotHeight;
      const from = histogram.low_ms + bucket * histogram.bucket_ms;
      bars.push(
        s(
          'rect',
          {
            x: left + bucket * slot + 1 + seriesIndex * barWidth,
            y: 10 + plotHeight - barHeight,
            width: barWidth,
            height: barHeight,
            class: `series-${seriesIndex % 6}`,
          },
          s('title', {}, `${model.model}: ${num(count)} calls, ${ms(from)} to ${ms(from + histogram.bucket_ms)}`),
        ),
      );
    });
  });
  return s(
    'svg',
    { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart', role: 'img', 'aria-label': 'Latency histogram' },
    s('title', {}, 'Latency histogram'),
    s('line', { x1: left, y1: 10 + plotHeight, x2: WIDTH - 10, y2: 10 + plotHeight, class: 'axis' }),
    label(left - 4, 14, num(max), 'end'),
    label(left - 4, 10 + plotHeight, '0', 'end'),
    label(left, height - 12, ms(histogram.low_ms)),
    label(WIDTH - 10, height - 12, ms(histogram.high_ms), 'end'),
    bars,
  );
}

// Generation vs grading cost per model, stacked.
export function costChart(models) {
  const row = 28;
  const height = models.length * row + 10;
  const scale = WIDTH - LABEL - 90;
  const max = Math.max(1e-12, ...models.map((model) => model.cost_usd + model.grading_cost_usd));
  return s(
    'svg',
    { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart', role: 'img', 'aria-label': 'Cost: generation and grading' },
    s('title', {}, 'Cost: generation and grading'),
    models.map((model, index) => {
      const y = 5 + index * row;
      const generation = (model.cost_usd / max) * scale;
      const grading = (model.grading_cost_usd / max) * scale;
      return s(
        'g',
        {},
        label(LABEL - 8, y + row / 2 - 2, model.model.length > 30 ? `${model.model.slice(0, 29)}…` : model.model, 'end'),
        s('rect', { x: LABEL, y: y + 4, width: generation, height: row - 12, class: 'cost-generation' },
          s('title', {}, `generation ${usd(model.cost_usd)}`)),
        s('rect', { x: LABEL + generation, y: y + 4, width: grading, height: row - 12, class: 'cost-grading' },
          s('title', {}, `grading ${usd(model.grading_cost_usd)}`)),
        label(LABEL + generation + grading + 6, y + row / 2 - 2, usd(model.cost_usd + model.grading_cost_usd)),
      );
    }),
  );
}

// A prompt's versions as a graph: one row per version (newest on top), a
// lane per line of descent, edges from parent to child; branch heads and
// labels as tags.
export function versionGraph(versions, branches, labels) {
  const ordered = [...versions].sort((x, y) => x.version - y.version);
  const lane = new Map();
  const laneTaken = new Map(); // parent id -> whether its lane continues already
  let lanes = 0;
  for (const version of ordered) {
    const parentLane = version.parent_id ? lane.get(version.parent_id) : undefined;
    if (parentLane !== undefined && !laneTaken.get(version.parent_id)) {
      lane.set(version.id, parentLane);
      laneTaken.set(version.parent_id, true);
    } else {
      lane.set(version.id, lanes);
      lanes += 1;
    }
  }
  const row = 34;
  const gap = 26;
  const newestFirst = [...ordered].reverse();
  const y = new Map(newestFirst.map((version, index) => [version.id, 20 + index * row]));
  const x = (id) => 20 + lane.get(id) * gap;
  const tagsAt = new Map();
  for (const branch of branches) {
    const key = branch.head_version_id;
    if (key) tagsAt.set(key, [...(tagsAt.get(key) ?? []), { text: branch.name, kind: 'branch' }]);
  }
  for (const item of labels) {
    const key = item.version_id;
    if (key) tagsAt.set(key, [...(tagsAt.get(key) ?? []), { text: item.name, kind: 'label' }]);
  }
  const textX = 20 + Math.max(1, lanes) * gap + 10;
  const height = newestFirst.length * row + 10;
  return s(
    'svg',
    { viewBox: `0 0 ${WIDTH} ${height}`, class: 'chart graph', role: 'img', 'aria-label': 'Versions, branches and labels' },
    ordered
      .filter((version) => version.parent_id && y.has(version.parent_id))
      .map((version) =>
        s('path', {
          d: `M${x(version.parent_id)},${y.get(version.parent_id)} C${x(version.parent_id)},${y.get(version.id) + row / 2} ${x(version.id)},${y.get(version.parent_id) - row / 2} ${x(version.id)},${y.get(version.id)}`,
          class: 'edge',
        }),
      ),
    newestFirst.map((version) => {
      const tags = tagsAt.get(version.id) ?? [];
      let tagX = textX + 40;
      return s(
        'g',
        { class: 'node', 'data-version': version.version },
        s('circle', { cx: x(version.id), cy: y.get(version.id), r: 6, class: `series-${lane.get(version.id) % 6}` }),
        label(textX, y.get(version.id), `v${version.version}`, 'start', 'chart-label strong'),
        tags.map((tag) => {
          const width = tag.text.length * 7 + 12;
          const node = s(
            'g',
            { class: `tag tag-${tag.kind}` },
            s('rect', { x: tagX, y: y.get(version.id) - 10, width, height: 20, rx: 4 }),
            label(tagX + 6, y.get(version.id), tag.text, 'start', 'chart-label tag-text'),
          );
          tagX += width + 6;
          return node;
        }),
        label(tagX + 4, y.get(version.id), version.commit_message.split('\n')[0].slice(0, 50), 'start', 'chart-label muted'),
      );
    }),
  );
}
