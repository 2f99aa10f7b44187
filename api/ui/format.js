// Building DOM nodes (never HTML strings: every text from the API is data)
// and formatting numbers for people.

export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';

export function s(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttributes(node, attributes);
  append(node, children);
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

export const pct = (value) =>
  value === null || value === undefined || Number.isNaN(value) ? '–' : `${(value * 100).toFixed(1)}%`;

export function usd(value) {
  if (value === null || value === undefined) return '–';
  if (value === 0) return '$0';
  if (Math.abs(value) < 0.01) return `$${value.toFixed(6)}`;
  return `$${value.toFixed(2)}`;
}

export const ms = (value) =>
  value === null || value === undefined ? '–' : `${Math.round(value).toLocaleString('en-US')} ms`;

export const num = (value) =>
  value === null || value === undefined ? '–' : Number(value).toLocaleString('en-US');

export const score = (value) =>
  value === null || value === undefined ? '–' : Number(value).toFixed(3);

export function pValue(value) {
  if (value === null || value === undefined) return '–';
  return value < 0.0001 ? '< 0.0001' : value.toFixed(4);
}

export function date(text) {
  if (!text) return '–';
  const when = new Date(text);
  return when.toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'short' });
}

export const shortId = (id) => String(id).slice(0, 8);

export function truncate(text, length) {
  if (text === null || text === undefined) return '';
  const value = String(text);
  return value.length > length ? `${value.slice(0, length - 1)}…` : value;
}

// A word-level diff (longest common subsequence over words and the spaces
// between them). Long texts are compared whole, not word by word: the
// table is quadratic.
const MAX_DIFF_TOKENS = 1500;

export function wordDiff(before, after) {
  const a = String(before ?? '').split(/(\s+)/).filter((token) => token !== '');
  const b = String(after ?? '').split(/(\s+)/).filter((token) => token !== '');
  if (a.length > MAX_DIFF_TOKENS || b.length > MAX_DIFF_TOKENS) {
    return before === after
      ? [{ kind: 'same', text: String(before ?? '') }]
      : [{ kind: 'removed', text: String(before ?? '') }, { kind: 'added', text: String(after ?? '') }];
  }
  const lengths = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      lengths[i][j] = a[i] === b[j] ? lengths[i + 1][j + 1] + 1 : Math.max(lengths[i + 1][j], lengths[i][j + 1]);
    }
  }
  const parts = [];
  const push = (kind, text) => {
    const last = parts[parts.length - 1];
    if (last && last.kind === kind) last.text += text;
    else parts.push({ kind, text });
  };
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      push('same', a[i]);
      i += 1;
      j += 1;
    } else if (lengths[i + 1][j] >= lengths[i][j + 1]) {
      push('removed', a[i]);
      i += 1;
    } else {
      push('added', b[j]);
      j += 1;
    }
  }
  while (i < a.length) push('removed', a[i++]);
  while (j < b.length) push('added', b[j++]);
  return parts;
}

// The diff as nodes: `side` 'a' shows what was removed, 'b' what was added.
export function diffNodes(parts, side) {
  return parts
    .filter((part) => part.kind === 'same' || (side === 'a' ? part.kind === 'removed' : part.kind === 'added'))
    .map((part) => (part.kind === 'same' ? part.text : h(side === 'a' ? 'del' : 'ins', {}, part.text)));
}
