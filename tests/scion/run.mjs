// Runs an SCXML document in SCION (W3C SCXML in JavaScript) over event sequences.
//
//   node tests/scion/run.mjs CHART.scxml < courses.json > configurations.json
//   node tests/scion/run.mjs CHART.scxml --lines     # one JSON list of courses per line
//
// stdin: a JSON list of courses, each a list of events {"event": NAME, "data": {...}}, each
// course run from the start in a fresh interpreter. With --lines, each line of stdin is such a
// list and gets its answer on one line of stdout (a test keeps one process for many runs).
// stdout: a JSON list, one entry per course: {"configurations": [...], "errors": [...]}, where
// configurations[0] is the configuration after start and configurations[i] the one after the
// i-th event (each a sorted list of atomic state ids), and errors lists what the interpreter
// reported (an `error.*` event, e.g. a guard that did not evaluate): a correct run has none.
// Exit status 2 when the document does not load or the input is not a list of courses.
// Used by tests/test_scion.py; the interpreter version is pinned in package-lock.json.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import scxml from "@scion-scxml/scxml";

function fail(message) {
  process.stderr.write(`run.mjs: ${message}\n`);
  process.exit(2);
}

function prepared(path) {
  const document = readFileSync(path, "utf8");
  return new Promise((ok, ko) => {
    scxml.documentStringToModel(resolve(path), document, (err, model) => {
      if (err) {
        ko(err);
        return;
      }
      model.prepare((err2, fnModel) => (err2 ? ko(err2) : ok(fnModel)));
    });
  });
}

function configuration(chart) {
  return [...chart.getConfiguration()].sort();
}

function run(fnModel, course) {
  const chart = new scxml.core.Statechart(fnModel);
  const errors = [];
  chart.on("onError", (e) => errors.push({ name: e.name, data: e.data }));
  chart.start();
  const configurations = [configuration(chart)];
  for (const item of course) {
    chart.gen({ name: item.event, data: item.data ?? {} });
    configurations.push(configuration(chart));
  }
  return { configurations, errors };
}

function courses(text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    fail(`input is not JSON: ${e.message}`);
  }
  if (!Array.isArray(parsed) || !parsed.every(Array.isArray)) {
    fail("input must be a JSON list of courses, each a list of events");
  }
  return parsed;
}

const args = process.argv.slice(2);
const lines = args.includes("--lines");
const [path] = args.filter((a) => a !== "--lines");
if (!path || args.length > 2) fail("usage: node run.mjs CHART.scxml [--lines] < courses.json");
let fnModel;
try {
  fnModel = await prepared(path);
} catch (e) {
  fail(`cannot load ${path}: ${e.message ?? e}`);
}
const answer = (text) => JSON.stringify(courses(text).map((c) => run(fnModel, c))) + "\n";
if (lines) {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (line.trim()) process.stdout.write(answer(line));
  }
} else {
  process.stdout.write(answer(readFileSync(0, "utf8")));
}
