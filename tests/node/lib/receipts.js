'use strict';
// The two receipts a manufacturer checks, each recomputed from what the client holds itself:
// a statistics answer (answer.json as released, the dataset id) and a released job (the files it
// downloaded, the package it zipped, the spec it sent, the dataset id).

const contract = require('./contract');

const { VerificationError } = contract;

/** StatisticKind enum name -> the `kind` the signed answer states ("STATISTIC_KIND_MEAN" -> "mean"). */
const kindText = (name) => name.replace(/^STATISTIC_KIND_/, '').toLowerCase();

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A statistics answer: the receipt against the pinned root, the statistics workload of the
 * answer's dataset, answer.json as the one released file; then the ε charged and every value shown
 * must be the signed ones. `answer` is a QueryAnswer (proto field names); `options` those of
 * contract.verifyReport (root, allowedMeasurements, and optionally expectedNonce, maxAgeSeconds, now).
 */
function verifyStatsAnswer(answer, options) {
  const datasetId = answer.dataset.replace(/^datasets\//, '');
  const expectedWorkload = contract.statsWorkload(datasetId);
  const report = contract.verifyReport(answer.receipt, { ...options, expectedWorkload, releasedFiles: { 'answer.json': answer.answer_json } });
  const signed = JSON.parse(Buffer.from(answer.answer_json).toString('utf8'));
  if (Math.abs(Number(report.payload.epsilon_spent) - answer.epsilon) > 1e-9 || signed.epsilon !== answer.epsilon) {
    throw new VerificationError('EPSILON_MISMATCH', `the answer states ε ${answer.epsilon}, its receipt ${report.payload.epsilon_spent}`);
  }
  const shown = {
    kind: kindText(answer.kind),
    delta: answer.delta,
    confidence: answer.confidence,
    mechanism: answer.mechanism,
    rows_per_patient: answer.rows_per_patient,
    bounds: answer.bounds ? [answer.bounds.lower, answer.bounds.upper] : null,
    cells: answer.cells.map((c) => [c.key, c.statistic, c.value, c.half_width, c.unit, c.level ?? null]),
  };
  const fromSigned = {
    kind: signed.kind,
    delta: signed.delta,
    confidence: signed.confidence,
    mechanism: signed.mechanism && signed.mechanism.name,
    rows_per_patient: signed.rows_per_patient,
    bounds: signed.bounds,
    cells: (signed.cells || []).map((c) => [c.key, c.statistic, c.value, c.half_width, c.unit, c.level]),
  };
  for (const field of Object.keys(shown)) {
    if (!same(shown[field], fromSigned[field])) {
      throw new VerificationError('RELEASED_FILES_MISMATCH', `the answer's ${field} differs from the signed answer`);
    }
  }
  return { report, expectedWorkload, datasetId };
}

/**
 * A released job: `files` are the downloaded artefacts (receipt.json among them), `packageFiles`
 * the files this client zipped, `spec` the EvaluationSpec or TrainingSpec it sent; the rest are
 * contract.verifyReport's options.
 */
function verifyJobRelease({ kind, spec, files, packageFiles, ...options }) {
  if (!files['receipt.json']) throw new VerificationError('RELEASED_FILES_MISMATCH', 'no receipt.json was downloaded');
  const released = Object.fromEntries(Object.entries(files).filter(([name]) => name !== 'receipt.json'));
  const packageDigest = contract.packageDigest(packageFiles);
  const parameters = kind === 'training' ? contract.trainingParameters(spec) : contract.evaluationParameters(spec);
  const datasetId = spec.dataset.replace(/^datasets\//, '');
  const expectedWorkload = contract.jobWorkload(packageDigest, parameters, datasetId);
  const report = contract.verifyReport(files['receipt.json'], { ...options, expectedWorkload, releasedFiles: released });
  return { report, packageDigest, parameters, expectedWorkload };
}

module.exports = { verifyStatsAnswer, verifyJobRelease };
