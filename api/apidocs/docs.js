// Renders /openapi.json: one section per operation with its parameters,
// request body and responses (schemas with $refs resolved one level deep).
// Text goes in with textContent only: nothing from the document is parsed as HTML.

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: (doc.components?.schemas ?? {})[name] ?? {} };
  }
  return { name: null, schema: schema ?? {} };
}

function typeOf(doc, schema) {
  if (!schema) return "any";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.oneOf) return schema.oneOf.map((s) => typeOf(doc, s)).join(" | ");
  if (schema.allOf) return schema.allOf.map((s) => typeOf(doc, s)).join(" & ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array") return `${typeOf(doc, schema.items)}[]`;
  return (type ?? "any") + (schema.format ? ` (${schema.format})` : "");
}

function schemaBlock(doc, raw) {
  const { name, schema } = resolve(doc, raw);
  const block = el("div");
  if (name) block.append(el("p", {}, "Schema ", el("code", {}, name)));
  if (schema.properties) {
    const required = new Set(schema.required ?? []);
    const rows = Object.entries(schema.properties).map(([prop, value]) =>
      el("tr", {}, el("td", {}, el("code", {}, prop), required.has(prop) ? " *" : ""),
        el("td", {}, el("code", {}, typeOf(doc, value))),
        el("td", {}, value.description ?? "")));
    block.append(el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "")), ...rows));
  }
  block.append(el("details", {}, el("summary", {}, "JSON Schema"), el("pre", {}, JSON.stringify(schema, null, 2))));
  return block;
}

function operationSection(doc, path, method, op) {
  const id = `${method}-${path}`.replace(/[^a-zA-Z0-9_-]/g, "_");
  const section = el("section", { class: "op", id, "data-search": `${method} ${path} ${(op.tags ?? []).join(" ")} ${JSON.stringify(op.responses)}`.toLowerCase() });
  section.append(el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), path,
    op.security ? el("span", { class: "lock" }, "Bearer key") : null));
  if (op.summary || op.description) section.append(el("p", {}, op.description ?? op.summary));
  if (op.parameters?.length) {
    section.append(el("h4", {}, "Parameters"), el("table", {},
      el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")),
      ...op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
        el("td", {}, p.in), el("td", {}, el("code", {}, typeOf(doc, p.schema))), el("td", {}, p.description ?? "")))));
  }
  if (op.requestBody) {
    section.append(el("h4", {}, "Request body"));
    for (const [type, media] of Object.entries(op.requestBody.content ?? {})) {
      section.append(el("p", {}, el("code", {}, type)), schemaBlock(doc, media.schema));
    }
  }
  section.append(el("h4", {}, "Responses"));
  const rows = Object.entries(op.responses ?? {}).map(([status, response]) => {
    const types = Object.keys(response.content ?? {});
    const codes = Object.values(response.content ?? {}).flatMap((m) => m.schema?.properties?.code?.enum ?? []);
    const details = el("td", {}, response.description ?? "",
      codes.length ? el("div", {}, "code: ", ...codes.flatMap((c, i) => [i ? ", " : "", el("code", {}, c)])) : null,
      response.headers ? el("div", {}, "headers: ", Object.keys(response.headers).join(", ")) : null);
    const schemas = Object.values(response.content ?? {}).filter((m) => m.schema && !m.schema.properties?.code);
    if (schemas.length) details.append(el("details", {}, el("summary", {}, "body"), schemaBlock(doc, schemas[0].schema)));
    return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, types.join(", ")), details);
  });
  section.append(el("table", {}, ...rows));
  return { id, section };
}

async function main() {
  const response = await fetch("/openapi.json");
  const doc = await response.json();
  const operations = [];
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of METHODS) {
      if (item[method]) operations.push({ path, method, op: item[method], tag: item[method].tags?.[0] ?? "other" });
    }
  }
  document.getElementById("summary").textContent =
    `${doc.info?.title ?? "API"} ${doc.info?.version ?? ""} · OpenAPI ${doc.openapi} · ${operations.length} operations · `;
  document.getElementById("summary").append(el("a", { href: "/openapi.json" }, "openapi.json"));
  const toc = document.getElementById("toc");
  const main = document.getElementById("operations");
  const byTag = new Map();
  for (const entry of operations) {
    if (!byTag.has(entry.tag)) byTag.set(entry.tag, []);
    byTag.get(entry.tag).push(entry);
  }
  for (const [tag, entries] of byTag) {
    toc.append(el("h2", {}, tag));
    main.append(el("h2", {}, tag));
    for (const { path, method, op } of entries) {
      const { id, section } = operationSection(doc, path, method, op);
      toc.append(el("a", { href: `#${id}`, "data-for": id }, `${method.toUpperCase()} ${path}`));
      main.append(section);
    }
  }
  document.getElementById("filter").addEventListener("input", (event) => {
    const needle = event.target.value.trim().toLowerCase();
    for (const section of main.querySelectorAll("section.op")) {
      const shown = !needle || section.dataset.search.includes(needle);
      section.hidden = !shown;
      const link = toc.querySelector(`a[data-for="${section.id}"]`);
      if (link) link.hidden = !shown;
    }
  });
}

main().catch((error) => {
  document.getElementById("summary").textContent = `Could not load /openapi.json: ${error}`;
});
