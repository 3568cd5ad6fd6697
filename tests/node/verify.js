#!/usr/bin/env node
'use strict';
// Re-verifies, offline, the receipts flow.js saved under CLEANROOM_OUT:
//
//   node tests/node/verify.js FOLDER ROOT_PEM_FILE MEASUREMENT[,MEASUREMENT...]
//
// FOLDER/stats: receipt.json, answer.json, answer.shown.json (the QueryAnswer as shown);
// FOLDER/job: request.json (the spec sent, the package folder), files/ (every downloaded artefact).
// Prints "verified ..." per receipt; exits 1 naming the first check that failed.

const fs = require('node:fs');
const path = require('node:path');
const contract = require('./lib/contract');
const { readPackageFiles } = require('./lib/zip');
const { verifyStatsAnswer, verifyJobRelease } = require('./lib/receipts');

function main([folder, rootPemFile, measurements]) {
  if (!folder || !rootPemFile || !measurements) throw new Error('usage: verify.js FOLDER ROOT_PEM_FILE MEASUREMENT[,...]');
  const trustInfo = { root: contract.loadRoot(fs.readFileSync(rootPemFile, 'utf8')), allowedMeasurements: measurements.split(',') };
  const stats = path.join(folder, 'stats');
  if (fs.existsSync(stats)) {
    const answer = JSON.parse(fs.readFileSync(path.join(stats, 'answer.shown.json'), 'utf8'));
    answer.receipt = fs.readFileSync(path.join(stats, 'receipt.json'));
    answer.answer_json = fs.readFileSync(path.join(stats, 'answer.json'));
    const { report } = verifyStatsAnswer(answer, trustInfo);
    console.log(`verified statistics receipt (ε ${report.payload.epsilon_spent})`);
  }
  const job = path.join(folder, 'job');
  if (fs.existsSync(job)) {
    const request = JSON.parse(fs.readFileSync(path.join(job, 'request.json'), 'utf8'));
    const files = {};
    for (const name of fs.readdirSync(path.join(job, 'files'))) files[name] = fs.readFileSync(path.join(job, 'files', name));
    const { report } = verifyJobRelease({ kind: request.kind, spec: request.spec, files, packageFiles: readPackageFiles(request.model_dir), ...trustInfo });
    console.log(`verified job receipt (ε ${report.payload.epsilon_spent})`);
  }
}

try {
  main(process.argv.slice(2));
} catch (error) {
  console.error(`verification FAILED: ${error instanceof contract.VerificationError ? error.message : error.stack || error}`);
  process.exit(1);
}
