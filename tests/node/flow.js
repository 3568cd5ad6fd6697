#!/usr/bin/env node
'use strict';
// The manufacturer flow from Node.js against a running server, with every receipt verified from
// the rules of docs/api/receipts.md. Run by tests/test_node_client.py; also by hand:
//
//   CLEANROOM_ADDRESS=127.0.0.1:50051 CLEANROOM_TOKEN=... CLEANROOM_ROOT_PEM=root.pem \
//   CLEANROOM_MODEL_DIR=examples/breast-cancer-mlp CLEANROOM_LABEL=malignant \
//   CLEANROOM_FEATURES=mean_radius,... CLEANROOM_MEAN_COLUMN=mean_radius node tests/node/flow.js
//
// Optional: CLEANROOM_DATASET (a display name or datasets/{id}; default: the only dataset shared),
// CLEANROOM_MEAN_BOUNDS ("0,40"), CLEANROOM_OUT (a folder to save the receipts and what they were
// checked against, for `node tests/node/verify.js FOLDER`). Exit status 0 only if every check passed.

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { Client, RpcError } = require('./lib/client');
const contract = require('./lib/contract');
const { readPackageFiles, zipFiles } = require('./lib/zip');
const { verifyStatsAnswer, verifyJobRelease } = require('./lib/receipts');

const FRESH_SECONDS = 900; // a receipt issued during this run
const FINAL_STATES = new Set(['JOB_STATE_RELEASED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_REJECTED']);

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') throw new Error(`${name} is not set`);
  return value;
}

function ok(what) {
  console.log(`ok ${what}`);
}

function expect(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function readPem(value) {
  return value.startsWith('-----BEGIN') ? value : fs.readFileSync(value, 'utf8');
}

async function expectError(promise, code, reason) {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof RpcError)) throw error;
    expect(error.code === code, `status ${code}, got ${error.code} (${error.details})`);
    const info = error.detail('google.rpc.ErrorInfo');
    expect(info && info.reason === reason && info.domain === 'cleanroom.v1',
      `ErrorInfo {reason: ${reason}, domain: cleanroom.v1} in grpc-status-details-bin, got ${JSON.stringify(error.detailMessages)}`);
    expect(error.status.code === error.numericCode && error.status.message === error.details, 'google.rpc.Status repeats the status code and message');
    const echoed = error.metadata.get('x-request-id');
    expect(echoed.length === 1 && echoed[0] === error.requestIdSent, `the x-request-id sent (${error.requestIdSent}) comes back in the error's trailers, got ${echoed}`);
    return error;
  }
  throw new Error(`expected ${code}, the call succeeded`);
}

async function whoAmI(client) {
  let echoed = null;
  const me = await client.call('IdentityService', 'WhoAmI', {}, undefined, (sent, trailers) => { echoed = [sent, trailers.get('x-request-id')]; });
  expect(echoed && echoed[1].length === 1 && echoed[1][0] === echoed[0], `the x-request-id sent comes back in the trailers, got ${echoed}`);
  expect(me.role === 'MANUFACTURER', `WhoAmI says MANUFACTURER, got ${me.role}`);
  ok(`who-am-I: ${me.name} (${me.display_name}), role ${me.role}; x-request-id echoed in the trailers`);
  return me;
}

async function trust(client, pinnedPem) {
  const root = contract.loadRoot(pinnedPem);
  const bundle = await client.call('AttestationService', 'GetTrustBundle', {});
  expect(bundle.simulated === true, 'the trust bundle says simulated');
  expect(bundle.root_fingerprint === root.fingerprint, `the bundle repeats the pinned root (${root.fingerprint}), got ${bundle.root_fingerprint}`);
  expect(bundle.allowed_measurements.length > 0, 'the bundle publishes allowed measurements');
  ok(`trust bundle: pinned root ${root.fingerprint.slice(0, 16)}..., ${bundle.allowed_measurements.length} allowed measurement(s), simulated`);
  return { root, allowedMeasurements: bundle.allowed_measurements };
}

async function findDataset(client, wanted) {
  const datasets = await client.list('DatasetService', 'ListDatasets', 'datasets');
  expect(datasets.length > 0, 'at least one dataset is shared with the manufacturer');
  const chosen = wanted
    ? datasets.find((d) => d.name === wanted || d.display_name === wanted)
    : datasets.length === 1 ? datasets[0] : undefined;
  expect(chosen, `dataset ${wanted || '(the only one)'} among ${datasets.map((d) => d.display_name)}`);
  expect(chosen.row_count === '0' && chosen.owner === '', 'a manufacturer sees no row count and no owner');
  ok(`datasets shared: ${datasets.length}; using ${chosen.name} "${chosen.display_name}" with ${chosen.columns.length} columns`);
  return chosen;
}

async function statistics(client, dataset, trustInfo, column, bounds, out) {
  const query = { kind: 'STATISTIC_KIND_MEAN', column, bounds: { lower: bounds[0], upper: bounds[1] }, epsilon: 0.5 };
  const answer = await client.call('StatsService', 'RunQuery', { request_id: crypto.randomUUID(), dataset: dataset.name, query });
  const { report, expectedWorkload } = verifyStatsAnswer(answer, { ...trustInfo, maxAgeSeconds: FRESH_SECONDS });
  const cell = answer.cells[0];
  ok(`statistics: mean(${column}) = ${cell.value.toFixed(3)} ± ${cell.half_width.toFixed(3)}, ε ${answer.epsilon}`);
  ok(`statistics receipt verified: signature chain to the pinned root, measurement allowed, workload ${expectedWorkload.slice(0, 16)}... = sha256("cleanroom.stats.v1\\0" + dataset id), issued ${report.payload.issued_at}, answer.json digest, the values shown = the values signed, ε ${report.payload.epsilon_spent} = the answer's (${report.epsilon.how})`);
  if (out) {
    const dir = path.join(out, 'stats');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'receipt.json'), answer.receipt);
    fs.writeFileSync(path.join(dir, 'answer.json'), answer.answer_json);
    const shown = { ...answer, receipt: undefined, answer_json: undefined };
    fs.writeFileSync(path.join(dir, 'answer.shown.json'), JSON.stringify(shown));
  }
  return answer;
}

async function submitModel(client, modelDir) {
  const files = readPackageFiles(modelDir);
  const zip = zipFiles(files);
  const model = await client.submitModel(zip);
  expect(model.state === 'MODEL_STATE_ACCEPTED', `model accepted, got ${model.state}: ${JSON.stringify(model.intake_report.findings)}`);
  const digest = contract.packageDigest(files);
  expect(model.package_sha256 === digest, `package digest recomputed from the zipped files (${digest}), server says ${model.package_sha256}`);
  ok(`model submitted: ${model.name} ${model.display_name} ${model.version} (zip of ${Object.keys(files).length} files at the root, ${zip.length} bytes), package digest ${digest.slice(0, 16)}... recomputed`);
  return { model, files };
}

async function errorPaths(client, spec) {
  const bad = await expectError(
    client.call('JobService', 'SubmitEvaluation', { request_id: crypto.randomUUID(), spec: { ...spec, target_epsilon: -1 } }),
    'INVALID_ARGUMENT', 'BAD_REQUEST');
  const fields = (bad.detail('google.rpc.BadRequest') || { field_violations: [] }).field_violations.map((v) => v.field);
  expect(fields.includes('spec.target_epsilon'), `BadRequest names spec.target_epsilon, got ${fields}`);
  ok(`error path: SubmitEvaluation with ε -1 -> INVALID_ARGUMENT, ErrorInfo reason BAD_REQUEST, BadRequest field ${fields.join(', ')}, x-request-id echoed`);
  await expectError(client.call('JobService', 'GetJob', { name: 'jobs/0123456789abcdef' }), 'NOT_FOUND', 'NOT_FOUND');
  ok('error path: GetJob of an unknown job -> NOT_FOUND, ErrorInfo reason NOT_FOUND, x-request-id echoed');
}

async function evaluate(client, spec) {
  const job = await client.call('JobService', 'SubmitEvaluation', { request_id: crypto.randomUUID(), spec });
  expect(['JOB_STATE_QUEUED', 'JOB_STATE_RUNNING'].includes(job.state), `the job is queued (auto-approved), got ${job.state}`);
  const states = [];
  const seen = await client.collect('JobService', 'WatchJob', { name: job.name }, 600, (m) => states.push(m.state));
  const last = seen[seen.length - 1];
  expect(last && FINAL_STATES.has(last.state), `WatchJob ends in a final state, got ${states}`);
  expect(last.state === 'JOB_STATE_RELEASED', `the job is released, got ${last.state} (${last.failure})`);
  ok(`evaluation job ${job.name} watched: ${[...new Set(states)].join(' -> ')}`);
  return client.call('JobService', 'GetJob', { name: job.name });
}

async function download(client, job) {
  const files = {};
  for (const artifact of job.artifacts) {
    const data = await client.download(job.name, artifact.name);
    expect(contract.sha256Hex(data) === artifact.sha256 && String(data.length) === artifact.size_bytes, `${artifact.name} matches its listed digest and size`);
    files[artifact.name] = data;
  }
  ok(`downloaded ${Object.keys(files).sort().join(', ')}`);
  return files;
}

function saveJob(out, { spec, files, modelDir }) {
  const dir = path.join(out, 'job');
  fs.mkdirSync(path.join(dir, 'files'), { recursive: true });
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, 'files', name), data);
  fs.writeFileSync(path.join(dir, 'request.json'), JSON.stringify({ kind: 'evaluation', spec, model_dir: path.resolve(modelDir) }));
}

async function main() {
  const client = new Client(env('CLEANROOM_ADDRESS'), env('CLEANROOM_TOKEN'));
  const out = process.env.CLEANROOM_OUT || '';
  const modelDir = env('CLEANROOM_MODEL_DIR');
  try {
    await whoAmI(client);
    const trustInfo = await trust(client, readPem(env('CLEANROOM_ROOT_PEM')));
    const dataset = await findDataset(client, process.env.CLEANROOM_DATASET || '');
    const features = env('CLEANROOM_FEATURES').split(',');
    const label = env('CLEANROOM_LABEL');
    const columns = new Set(dataset.columns.map((c) => c.name));
    expect([...features, label].every((c) => columns.has(c)), 'the features and label are in the schema the manufacturer sees');
    const bounds = env('CLEANROOM_MEAN_BOUNDS', '0,40').split(',').map(Number);
    await statistics(client, dataset, trustInfo, env('CLEANROOM_MEAN_COLUMN'), bounds, out);
    const { model, files: packageFiles } = await submitModel(client, modelDir);
    // ε 1 and δ 1e-5 on purpose: the workload hashes them as "1.0" and "0.00001" (the number-to-text rule).
    const spec = { model: model.name, dataset: dataset.name, feature_columns: features, label_column: label,
      target_epsilon: 1, target_delta: 1e-5, metrics: ['auroc', 'accuracy'], max_rows_per_patient: 0 };
    await errorPaths(client, spec);
    const job = await evaluate(client, spec);
    const files = await download(client, job);
    const { report, parameters, expectedWorkload } = verifyJobRelease({ kind: 'evaluation', spec, files, packageFiles, ...trustInfo, maxAgeSeconds: FRESH_SECONDS });
    expect(job.workload === expectedWorkload, 'the job shows the workload this client recomputed');
    ok(`job parameters as hashed: ${contract.canonicalJson(parameters).toString()}`);
    ok(`job receipt verified: signature chain to the pinned root, measurement allowed, workload ${expectedWorkload.slice(0, 16)}... from the package digest, the spec sent and the dataset id, issued ${report.payload.issued_at}, digests of ${Object.keys(report.payload.released_files).sort().join(', ')}, ε ${report.payload.epsilon_spent} (${report.payload.accountant}: ${report.epsilon.how})`);
    if (out) saveJob(out, { spec, files, modelDir });
    console.log('node client: every check passed');
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`node client FAILED: ${error.stack || error}`);
  process.exit(1);
});
