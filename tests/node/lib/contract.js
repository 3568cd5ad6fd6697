'use strict';
// The receipt contract of docs/api/receipts.md, written from the document alone in Node's standard
// library: canonical JSON, the number-to-text rule, digests, Ed25519 signatures and the checks a
// client runs on a statistics or job receipt. No gRPC here (see client.js); vectors.js replays
// docs/api/vectors/*.json through these functions.

const crypto = require('node:crypto');

class VerificationError extends Error {
  constructor(check, detail) {
    super(`${check}: ${detail}`);
    this.check = check; // which check failed, e.g. BAD_SIGNATURE, WORKLOAD_MISMATCH
  }
}

const SIGNATURE_DOMAIN = Buffer.from('cleanroom-enclave-sim/signature/v1\0', 'ascii');
const WORKLOAD_DOMAIN = Buffer.from('cleanroom-workload-v1\0', 'ascii');
const PACKAGE_DOMAIN = Buffer.from('cleanroom-model-package-v1\0', 'ascii');
const STATS_WORKLOAD_DOMAIN = Buffer.from('cleanroom.stats.v1\0', 'ascii');

const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const sha256Hex = (data) => sha256(data).toString('hex');
const isHex = (value, nbytes) => typeof value === 'string' && value.length === 2 * nbytes && /^[0-9a-f]*$/.test(value);

// --------------------------------------------------------------------------- canonical JSON

// Object keys are sorted by Unicode code point. JavaScript's default sort compares UTF-16 code
// units, which differs for characters beyond U+FFFF, so compare code points explicitly.
function compareCodePoints(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

function encodeString(text) {
  if (/[\uD800-\uDFFF]/u.test(text)) throw new TypeError('a lone surrogate has no UTF-8 form');
  // JSON.stringify escapes exactly ", \, \b \f \n \r \t and the other controls below U+0020 as
  // \u00xx (lower-case hex), and leaves every other character as itself: the canonical spelling.
  return JSON.stringify(text);
}

function encode(value) {
  if (value === null || value === true || value === false) return String(value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError(`${value} is not an integer: fractions are decimal strings`);
    return String(value);
  }
  if (typeof value === 'string') return encodeString(value);
  if (Array.isArray(value)) return `[${value.map(encode).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareCodePoints);
    return `{${keys.map((k) => `${encodeString(k)}:${encode(value[k])}`).join(',')}}`;
  }
  throw new TypeError(`${typeof value} has no canonical JSON form`);
}

/** The canonical UTF-8 bytes of a value. */
function canonicalJson(value) {
  return Buffer.from(encode(value), 'utf8');
}

/** Parses bytes that must already be canonical (else MALFORMED): one spelling per statement. */
function parseCanonical(bytes) {
  let value;
  try {
    const text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
    value = JSON.parse(text);
    if (!canonicalJson(value).equals(Buffer.from(bytes))) throw new Error('re-encodes differently');
  } catch (error) {
    throw new VerificationError('MALFORMED', `not canonical JSON (${error.message})`);
  }
  return value;
}

// --------------------------------------------------------------------------- numbers as text

/**
 * A finite, non-negative double as decimal text (receipts.md "Numbers as decimal text"):
 * 1. its shortest round-trip digits (String(x) and toExponential() give them);
 * 2. written positionally, no exponent: 1e-5 -> "0.00001", 1.5e16 -> "15000000000000000";
 * 3. with ".0" appended when there is no "." and x < 10^16: 3 -> "3.0" (String(3) is "3": the trap);
 * 4. 0 -> "0.0", negative zero -> "0"; negative, NaN and infinite values are refused.
 */
function decimalText(value) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError('number must be finite and non-negative');
  }
  if (value === 0) return Object.is(value, -0) ? '0' : '0.0';
  const [mantissa, exponent] = value.toExponential().split('e'); // e.g. "1.5", "+16"
  const digits = mantissa.replace('.', '');
  const point = Number(exponent) + 1; // how many digits stand before the decimal point
  let text;
  if (point <= 0) text = `0.${'0'.repeat(-point)}${digits}`;
  else if (point >= digits.length) text = digits + '0'.repeat(point - digits.length);
  else text = `${digits.slice(0, point)}.${digits.slice(point)}`;
  return !text.includes('.') && value < 1e16 ? `${text}.0` : text;
}

const isDecimalText = (value) => typeof value === 'string' && /^(0|[1-9][0-9]*)(\.[0-9]+)?$/.test(value);

// --------------------------------------------------------------------------- digests

function checkRelativePath(name) {
  if (typeof name !== 'string' || name === '' || name.includes('\\') || name.includes('\0') || name.startsWith('/')
      || name.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new VerificationError('MALFORMED', `not a normalised relative path: ${JSON.stringify(name)}`);
  }
  return name;
}

const sortedNames = (files) => Object.keys(files).sort(compareCodePoints);

/** sha256 over the package's relative paths and the sha256 of each file's bytes (not the zip's). */
function packageDigest(files) {
  const entries = sortedNames(files).map((name) => [checkRelativePath(name), sha256Hex(files[name])]);
  return sha256Hex(Buffer.concat([PACKAGE_DOMAIN, canonicalJson(entries)]));
}

/** The workload a job receipt binds: package digest, the job's parameters, the dataset id. */
function jobWorkload(packageDigestHex, jobParameters, datasetId) {
  const statement = { model_version: packageDigestHex, job_parameters: jobParameters, dataset_id: datasetId };
  return sha256Hex(Buffer.concat([WORKLOAD_DOMAIN, canonicalJson(statement)]));
}

/** The workload every statistics receipt on a dataset binds. */
function statsWorkload(datasetId) {
  return sha256Hex(Buffer.concat([STATS_WORKLOAD_DOMAIN, Buffer.from(datasetId, 'utf8')]));
}

function releasedFileDigests(files) {
  const out = {};
  for (const name of sortedNames(files)) out[checkRelativePath(name)] = sha256Hex(files[name]);
  return out;
}

/** The report options, only those set (lists of decimal text in the order sent; score_bins when not 0). */
function reportOptions(spec) {
  const out = {};
  for (const name of ['sensitivity_at_specificity', 'specificity_at_sensitivity', 'net_benefit_thresholds']) {
    if ((spec[name] || []).length) out[name] = spec[name].map(decimalText);
  }
  if (spec.score_bins) out.score_bins = spec.score_bins;
  return out;
}

/** decimalText with a leading "-" for a negative number (a signed channel's threshold); -0 as 0. */
function signedDecimalText(value) {
  return value < 0 ? `-${decimalText(-value)}` : decimalText(value + 0);
}

/** A stream request's windows, only when set (min_coverage 0, left out, reads as 0.5; label_rule only when set). */
function windowsParameters(spec) {
  const w = spec.windows;
  if (!w) return {};
  const out = { window_seconds: w.window_seconds || 0, stride_seconds: w.stride_seconds || 0, resample_seconds: w.resample_seconds || 0,
                min_coverage: decimalText(w.min_coverage || 0.5) };
  const r = w.label_rule;
  if (r) out.label_rule = { channel: r.channel || '', comparison: r.comparison || '', threshold: signedDecimalText(r.threshold || 0), for_seconds: r.for_seconds || 0 };
  return { windows: out };
}

/** A job's parameters as the workload binds them, from the spec the client sent (proto field names). */
function evaluationParameters(spec) {
  return {
    kind: 'evaluation',
    feature_columns: [...spec.feature_columns],
    label_column: spec.label_column,
    target_epsilon: decimalText(spec.target_epsilon),
    target_delta: decimalText(spec.target_delta),
    metrics: [...(spec.metrics || [])].sort(compareCodePoints),
    max_rows_per_patient: spec.max_rows_per_patient || 1,
    ...reportOptions(spec),
    ...windowsParameters(spec),
  };
}

function trainingParameters(spec) {
  return {
    kind: 'training',
    feature_columns: [...spec.feature_columns],
    label_column: spec.label_column,
    target_epsilon: decimalText(spec.target_epsilon),
    target_delta: decimalText(spec.target_delta),
    epochs: spec.epochs,
    expected_batch_patients: spec.expected_batch_patients,
    learning_rate: decimalText(spec.learning_rate),
    optimizer: spec.optimizer,
    clipping_norm: decimalText(spec.clipping_norm),
    validation_fraction: decimalText(spec.validation_fraction),
    max_rows_per_patient: spec.max_rows_per_patient || 1,
    // Fields left out (0 / ''): pass the job's echoed spec, whose `recipe` names the rule that filled them.
    ...(spec.recipe ? { recipe: spec.recipe } : {}),
    ...reportOptions(spec),
    ...windowsParameters(spec),
  };
}

// --------------------------------------------------------------------------- keys and signatures

function ed25519FromRaw(raw) {
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

/** The pinned root: an Ed25519 public key in PEM (SubjectPublicKeyInfo). Returns {key, raw, fingerprint}. */
function loadRoot(pem) {
  const key = crypto.createPublicKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error('the pinned root must be an Ed25519 public key');
  const raw = Buffer.from(key.export({ format: 'jwk' }).x, 'base64url');
  return { key, raw, fingerprint: sha256Hex(raw) };
}

/** The bytes a signature covers: domain, the statement's type, a zero byte, the canonical payload. */
function signedMessage(payload) {
  return Buffer.concat([SIGNATURE_DOMAIN, Buffer.from(payload.type, 'ascii'), Buffer.from([0]), canonicalJson(payload)]);
}

function signatureValid(publicKey, payload, signatureHex) {
  if (!isHex(signatureHex, 64)) return false;
  return crypto.verify(null, signedMessage(payload), publicKey, Buffer.from(signatureHex, 'hex'));
}

// --------------------------------------------------------------------------- statements

function malformed(detail) {
  return new VerificationError('MALFORMED', detail);
}

function exactFields(obj, expected, what) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw malformed(`${what} is not an object`);
  const have = Object.keys(obj).sort();
  const want = [...expected].sort();
  if (have.join('\0') !== want.join('\0')) throw malformed(`${what} has fields [${have}], expected [${want}]`);
}

/** An envelope {"payload": {...}, "signature": hex}: shape, type and simulated flag; not the signature. */
function openEnvelope(obj, type) {
  exactFields(obj, ['payload', 'signature'], type);
  if (!isHex(obj.signature, 64)) throw malformed(`${type} signature is not 64 bytes of lower-case hex`);
  const { payload } = obj;
  if (payload === null || typeof payload !== 'object' || payload.type !== type) throw malformed(`expected a ${type}`);
  if (payload.simulated !== true) throw new VerificationError('NOT_SIMULATED_FLAG', `${type} does not say simulated: true`);
  return payload;
}

const TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

function parseTime(text, what) {
  const m = typeof text === 'string' && TIME.exec(text);
  if (!m) throw malformed(`${what} is not RFC 3339 UTC with whole seconds`);
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
  if (new Date(ms).toISOString().replace('.000Z', 'Z') !== text) throw malformed(`${what} is not a valid date`);
  return ms;
}

const CERTIFICATE_FIELDS = ['type', 'simulated', 'subject', 'public_key', 'issuer', 'not_before', 'not_after'];
const REPORT_FIELDS = ['type', 'simulated', 'measurement', 'workload', 'dp_parameters', 'epsilon_spent', 'accountant',
  'dataset_commitment', 'released_files', 'nonce', 'issued_at', 'certificate'];

function readCertificate(obj) {
  const payload = openEnvelope(obj, 'attestation-certificate');
  exactFields(payload, CERTIFICATE_FIELDS, 'certificate');
  if (typeof payload.subject !== 'string' || !payload.subject) throw malformed('certificate.subject is empty');
  for (const key of ['public_key', 'issuer']) if (!isHex(payload[key], 32)) throw malformed(`certificate.${key} is not 32 bytes of hex`);
  return { payload, signature: obj.signature, notBefore: parseTime(payload.not_before, 'not_before'), notAfter: parseTime(payload.not_after, 'not_after') };
}

/** Parses a result report strictly; checks no signature. */
function parseReport(bytes) {
  const obj = parseCanonical(bytes);
  const payload = openEnvelope(obj, 'result-report');
  exactFields(payload, REPORT_FIELDS, 'report');
  for (const key of ['measurement', 'workload', 'dataset_commitment', 'nonce']) {
    if (!isHex(payload[key], 32)) throw malformed(`report.${key} is not 32 bytes of lower-case hex`);
  }
  if (!isDecimalText(payload.epsilon_spent)) throw malformed('report.epsilon_spent is not a decimal string');
  if (typeof payload.accountant !== 'string' || !payload.accountant) throw malformed('report.accountant is empty');
  for (const key of ['dp_parameters', 'released_files']) {
    if (payload[key] === null || typeof payload[key] !== 'object' || Array.isArray(payload[key])) throw malformed(`report.${key} is not an object`);
  }
  for (const [name, digest] of Object.entries(payload.released_files)) {
    checkRelativePath(name);
    if (!isHex(digest, 32)) throw malformed('report.released_files has a digest that is not sha256 hex');
  }
  return { payload, signature: obj.signature, issuedAt: parseTime(payload.issued_at, 'issued_at'), certificate: readCertificate(payload.certificate) };
}

// --------------------------------------------------------------------------- ε

// The RDP orders of the zcdp-rdp conversion: 1 + k/20 (k = 1..99), 6 + k/2 (k = 0..59), 36, 40, ..., 256.
const RDP_ORDERS = [
  ...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 20),
  ...Array.from({ length: 60 }, (_, k) => 6 + k / 2),
  ...Array.from({ length: 56 }, (_, k) => 36 + 4 * k),
];

/** (ε, δ) of a ρ-zCDP mechanism: min over α of α·ρ − (ln δ + ln α)/(α − 1) + ln((α − 1)/α). */
function zcdpEpsilon(rho, delta) {
  let best = Infinity;
  for (const a of RDP_ORDERS) {
    const eps = a * rho - (Math.log(delta) + Math.log(a)) / (a - 1) + Math.log((a - 1) / a);
    if (eps < best) best = eps;
  }
  return best;
}

/**
 * Step 7 as far as Node can go without an accountant library: zcdp-rdp is recomputed from ρ and δ;
 * prv is bounded by the RDP ε the report also states (the document's fallback for a verifier
 * without PRV); basic (statistics) is checked against the answer by the caller. Returns
 * {recomputed, how}.
 */
function checkEpsilon(report, tolerance = 1e-6) {
  const { accountant, dp_parameters: params, epsilon_spent: spent } = report.payload;
  const stated = Number(spent);
  const number = (key) => {
    if (!isDecimalText(params[key])) throw new VerificationError('EPSILON_MISMATCH', `dp_parameters.${key} is not decimal text`);
    return Number(params[key]);
  };
  if (accountant === 'zcdp-rdp') {
    const recomputed = zcdpEpsilon(number('rho'), number('delta'));
    if (!Number.isFinite(recomputed) || Math.abs(recomputed - stated) > tolerance) {
      throw new VerificationError('EPSILON_MISMATCH', `stated ε ${spent}, recomputed ${recomputed}`);
    }
    return { recomputed, how: `recomputed from ρ ${params.rho} and δ ${params.delta}` };
  }
  if (accountant === 'prv' || accountant === 'rdp') {
    if (!(stated <= number('rdp_epsilon') + tolerance)) throw new VerificationError('EPSILON_MISMATCH', `stated ε ${spent} above its RDP bound ${params.rdp_epsilon}`);
    return { recomputed: null, how: `at most its RDP bound ${params.rdp_epsilon} (not recomputed: no ${accountant} accountant in Node)` };
  }
  if (accountant === 'basic') return { recomputed: null, how: 'basic composition, checked against the answer' };
  throw new VerificationError('EPSILON_MISMATCH', `unknown accountant ${accountant}`);
}

// --------------------------------------------------------------------------- verification

/**
 * Every check of docs/api/receipts.md "Verification order", in that order; throws
 * VerificationError naming the first that fails. `releasedFiles`: name -> bytes received.
 * Optional: expectedNonce, maxAgeSeconds with now (ms; default Date.now()), checkEpsilon (default true).
 * Returns {payload, signature, epsilon: {recomputed, how}}.
 */
function verifyReport(bytes, { root, allowedMeasurements, expectedWorkload, releasedFiles, expectedNonce, maxAgeSeconds, now, epsilon = true }) {
  const report = parseReport(bytes); // 1
  const cert = report.certificate; // 2
  if (cert.payload.issuer !== root.fingerprint || !signatureValid(root.key, cert.payload, cert.signature)) {
    throw new VerificationError('UNTRUSTED_CERTIFICATE', 'certificate is not signed by the pinned root');
  }
  if (!signatureValid(ed25519FromRaw(Buffer.from(cert.payload.public_key, 'hex')), report.payload, report.signature)) {
    throw new VerificationError('BAD_SIGNATURE', 'report is not signed by the certified attestation key');
  }
  if (!(cert.notBefore <= report.issuedAt && report.issuedAt <= cert.notAfter)) {
    throw new VerificationError('CERTIFICATE_EXPIRED', `certificate valid ${cert.payload.not_before}..${cert.payload.not_after}, report issued ${report.payload.issued_at}`);
  }
  if (!allowedMeasurements.includes(report.payload.measurement)) { // 3
    throw new VerificationError('WRONG_MEASUREMENT', 'measurement is not in the published allow-list');
  }
  if (!isHex(expectedWorkload, 32) || report.payload.workload !== expectedWorkload) { // 4
    throw new VerificationError('WORKLOAD_MISMATCH', `report is for workload ${report.payload.workload}, expected ${expectedWorkload}`);
  }
  if (expectedNonce !== undefined && report.payload.nonce !== expectedNonce) { // 5
    throw new VerificationError('NONCE_MISMATCH', 'report answers another request');
  }
  if (maxAgeSeconds !== undefined) {
    const age = ((now ?? Date.now()) - report.issuedAt) / 1000;
    if (!(age >= -30 && age <= maxAgeSeconds)) throw new VerificationError('STALE_REPORT', `report age ${age} s outside [-30, ${maxAgeSeconds}]`);
  }
  const received = releasedFileDigests(releasedFiles); // 6
  const signed = report.payload.released_files;
  const missing = Object.keys(signed).filter((n) => !(n in received));
  const extra = Object.keys(received).filter((n) => !(n in signed));
  const altered = Object.keys(signed).filter((n) => n in received && signed[n] !== received[n]);
  if (missing.length || extra.length || altered.length) {
    throw new VerificationError('RELEASED_FILES_MISMATCH', `missing [${missing}], not in report [${extra}], altered [${altered}]`);
  }
  return { ...report, epsilon: epsilon ? checkEpsilon(report) : null }; // 7
}

module.exports = {
  VerificationError,
  canonicalJson,
  parseCanonical,
  decimalText,
  isDecimalText,
  sha256Hex,
  packageDigest,
  jobWorkload,
  statsWorkload,
  releasedFileDigests,
  evaluationParameters,
  trainingParameters,
  loadRoot,
  ed25519FromRaw,
  signedMessage,
  signatureValid,
  parseReport,
  verifyReport,
  zcdpEpsilon,
  checkEpsilon,
  parseTime,
  compareCodePoints,
};
