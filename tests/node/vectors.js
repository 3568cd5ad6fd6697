#!/usr/bin/env node
'use strict';
// Replays docs/api/vectors/*.json through lib/contract.js: the Node implementation of the written
// rules must reproduce every canonical byte string, decimal text, digest, workload, signed message
// and receipt verdict. Prints one line per file; exits 1 at the first mismatch.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const contract = require('./lib/contract');
const { verifyStatsAnswer, verifyJobRelease } = require('./lib/receipts');

const VECTORS = path.resolve(__dirname, '..', '..', 'docs', 'api', 'vectors');
const load = (name) => JSON.parse(fs.readFileSync(path.join(VECTORS, name), 'utf8'));
const b64 = (text) => Buffer.from(text, 'base64');
const files64 = (map) => Object.fromEntries(Object.entries(map).map(([name, data]) => [name, b64(data)]));
const hex = (buffer) => Buffer.from(buffer).toString('hex');

function refused(fn, what) {
  assert.throws(fn, undefined, `${what} must be refused`);
}

function canonicalJson() {
  const v = load('canonical-json.json');
  for (const c of v.vectors) {
    const bytes = contract.canonicalJson(JSON.parse(c.input_json));
    assert.equal(bytes.toString('utf8'), c.canonical_utf8, c.description);
    assert.equal(hex(bytes), c.canonical_hex, c.description);
    assert.equal(contract.sha256Hex(bytes), c.sha256, c.description);
    assert.deepEqual(contract.parseCanonical(bytes), JSON.parse(c.input_json), c.description); // canonical bytes parse back
    if (c.canonical_utf8 !== c.input_json) refused(() => contract.parseCanonical(Buffer.from(c.input_json)), `${c.description}: non-canonical input`);
  }
  for (const c of v.refused) {
    // JSON.parse reads 3.0 as the integer 3, so the refusal shows where it matters: signed bytes
    // that carry a fractional or exponent number are not canonical.
    const compact = c.input_json.replace(/": /g, '":').replace(/, "/g, ',"');
    refused(() => contract.parseCanonical(Buffer.from(compact)), c.description);
  }
  refused(() => contract.canonicalJson({ epsilon: 1.5 }), 'a fractional number');
  return `${v.vectors.length} canonical forms, ${v.refused.length} refusals`;
}

function decimalText() {
  const v = load('decimal-text.json');
  for (const c of v.vectors) {
    const x = Buffer.from(c.float64_hex, 'hex').readDoubleBE(0);
    assert.equal(contract.decimalText(x), c.text, `${c.input_shortest}`);
    assert.ok(contract.isDecimalText(contract.decimalText(x)));
  }
  for (const c of v.refused) refused(() => contract.decimalText(Buffer.from(c.float64_hex, 'hex').readDoubleBE(0)), c.description);
  return `${v.vectors.length} numbers, ${v.refused.length} refusals`;
}

function workload() {
  const v = load('workload.json');
  assert.equal(hex(Buffer.from('cleanroom-workload-v1\0')), v.domain_hex);
  for (const c of v.jobs) {
    const parameters = c.kind === 'training' ? contract.trainingParameters(c.spec) : contract.evaluationParameters(c.spec);
    assert.equal(contract.canonicalJson(parameters).toString(), contract.canonicalJson(c.job_parameters).toString(), `${c.kind} parameters`);
    const statement = { model_version: c.package_digest, job_parameters: parameters, dataset_id: c.dataset_id };
    assert.equal(contract.canonicalJson(statement).toString('utf8'), c.statement_utf8, `${c.kind} statement`);
    assert.equal(contract.jobWorkload(c.package_digest, parameters, c.dataset_id), c.workload, `${c.kind} workload`);
    assert.equal(c.spec.dataset, `datasets/${c.dataset_id}`);
  }
  for (const c of v.statistics) {
    assert.equal(hex(Buffer.concat([Buffer.from('cleanroom.stats.v1\0'), Buffer.from(c.dataset_id)])), c.message_hex);
    assert.equal(contract.statsWorkload(c.dataset_id), c.workload, `statistics ${c.dataset_id}`);
  }
  return `${v.jobs.length} job workloads, ${v.statistics.length} statistics workloads`;
}

function modelPackage() {
  const v = load('model-package.json');
  assert.equal(hex(Buffer.from('cleanroom-model-package-v1\0')), v.domain_hex);
  for (const c of v.digests) {
    const files = files64(c.files);
    const entries = Object.keys(files).sort(contract.compareCodePoints).map((n) => [n, contract.sha256Hex(files[n])]);
    assert.equal(contract.canonicalJson(entries).toString('utf8'), c.entries_utf8, c.description);
    assert.equal(contract.packageDigest(files), c.digest, c.description);
  }
  return `${v.digests.length} package digests (the ${v.zips.length} zip vectors are the server's: it unpacks them)`;
}

function receipts() {
  const v = load('receipts.json');
  const root = contract.loadRoot(v.test_root.public_key_pem);
  assert.equal(root.fingerprint, v.test_root.fingerprint);
  assert.equal(hex(root.raw), v.test_root.public_key_raw_hex);
  const certificate = v.test_attestation_key.certificate;
  assert.equal(contract.canonicalJson(certificate).toString('utf8'), v.test_attestation_key.certificate_utf8);
  assert.equal(hex(contract.signedMessage(certificate.payload)), v.test_attestation_key.certificate_signed_message_hex);
  assert.ok(contract.signatureValid(root.key, certificate.payload, certificate.signature), 'the test root signed the certificate');
  const base = { root, allowedMeasurements: v.allowed_measurements, now: contract.parseTime(v.verify_at, 'verify_at'), maxAgeSeconds: 3600 };
  for (const job of v.jobs) {
    const receipt = Buffer.from(job.receipt_utf8, 'utf8');
    assert.equal(hex(contract.signedMessage(contract.parseCanonical(receipt).payload)), job.signed_message_hex, `${job.kind} signed message`);
    const files = { ...files64(job.released_files), 'receipt.json': receipt };
    const verified = verifyJobRelease({ kind: job.kind, spec: job.spec, files, packageFiles: files64(job.package_files), ...base, expectedNonce: job.nonce });
    assert.equal(verified.expectedWorkload, job.expected_workload, `${job.kind} workload`);
    assert.equal(verified.report.payload.epsilon_spent, job.epsilon_spent);
    assert.equal(verified.report.payload.accountant, job.accountant);
  }
  const s = v.statistics;
  const answer = { ...s.answer, receipt: Buffer.from(s.receipt_utf8, 'utf8'), answer_json: Buffer.from(s.answer_json_utf8, 'utf8') };
  assert.deepEqual(answer.receipt, b64(s.answer.receipt_base64));
  assert.deepEqual(answer.answer_json, b64(s.released_files['answer.json']));
  const stats = verifyStatsAnswer(answer, { ...base, expectedNonce: s.nonce });
  assert.equal(stats.expectedWorkload, s.expected_workload);
  const training = v.jobs[0]; // the must_fail receipts are the training receipt, tampered (one edit each)
  for (const c of v.must_fail) {
    const files = files64(training.released_files);
    if (c.released_file_edit) files[c.released_file_edit] = Buffer.concat([files[c.released_file_edit], Buffer.from(' ')]);
    const options = { ...base, root: c.pinned_root_public_key_pem ? contract.loadRoot(c.pinned_root_public_key_pem) : root,
      expectedWorkload: c.expected_workload || training.expected_workload, releasedFiles: files };
    assert.throws(() => contract.verifyReport(Buffer.from(c.receipt_utf8, 'utf8'), options),
      (error) => error instanceof contract.VerificationError && error.check === c.reason, `${c.description}: ${c.reason}`);
  }
  return `${v.jobs.length} job receipts and 1 statistics receipt verified, ${v.must_fail.length} tampered receipts refused with the documented reason`;
}

let failed = false;
for (const [name, check] of Object.entries({ 'canonical-json.json': canonicalJson, 'decimal-text.json': decimalText, 'workload.json': workload,
  'model-package.json': modelPackage, 'receipts.json': receipts })) {
  try {
    console.log(`ok ${name}: ${check()}`);
  } catch (error) {
    failed = true;
    console.error(`FAILED ${name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
