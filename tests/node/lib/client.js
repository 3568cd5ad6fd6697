'use strict';
// A thin promise-based client over @grpc/grpc-js, with the .proto files of proto/ loaded at run
// time (no generated code). Errors come back as RpcError with the google.rpc.Status details of
// the `grpc-status-details-bin` trailer decoded (ErrorInfo, BadRequest, QuotaFailure).

const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..', '..');
const PROTO_DIR = path.join(REPO, 'proto');
const PROTO_FILES = ['identity', 'datasets', 'privacy', 'models', 'jobs', 'stats'].map((n) => `cleanroom/v1/${n}.proto`);
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };
const CHUNK = 1 << 20; // the API's largest stream chunk

function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).cleanroom.v1;
}

// google.rpc.* from tests/node/proto; google/protobuf/any.proto comes with protobufjs.
const statusRoot = new protobuf.Root();
statusRoot.resolvePath = (origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(__dirname, '..', 'proto', target));
statusRoot.loadSync('google/rpc/status.proto', { keepCase: true });
const Status = statusRoot.lookupType('google.rpc.Status');

class RpcError extends Error {
  constructor(error, method) {
    const code = grpc.status[error.code] || String(error.code);
    super(`${method}: ${code}: ${error.details}`);
    this.code = code; // e.g. "INVALID_ARGUMENT"
    this.numericCode = error.code;
    this.details = error.details; // the status message
    this.metadata = error.metadata;
    this.status = null; // the decoded google.rpc.Status, when the server sent one
    this.detailMessages = []; // [{type: "google.rpc.ErrorInfo", value: {reason, domain, metadata}}]
    const raw = error.metadata && error.metadata.get('grpc-status-details-bin');
    if (raw && raw.length) {
      this.status = Status.decode(raw[0]);
      for (const any of this.status.details) {
        const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
        const type = statusRoot.lookupType(typeName);
        this.detailMessages.push({ type: typeName, value: type.toObject(type.decode(any.value), { defaults: true }) });
      }
    }
  }

  /** The first detail of a type, e.g. detail('google.rpc.BadRequest'); null when absent. */
  detail(typeName) {
    const found = this.detailMessages.find((d) => d.type === typeName);
    return found ? found.value : null;
  }
}

class Client {
  constructor(address, token, { deadlineSeconds = 120 } = {}) {
    const v1 = loadServices();
    const credentials = grpc.credentials.createInsecure();
    const options = { 'grpc.max_receive_message_length': 4 << 20, 'grpc.max_send_message_length': 4 << 20 };
    this.stubs = {};
    for (const name of ['IdentityService', 'DatasetService', 'PrivacyService', 'ModelService', 'AttestationService', 'JobService', 'StatsService']) {
      this.stubs[name] = new v1[name](address, credentials, options);
    }
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
    this.deadlineSeconds = deadlineSeconds;
  }

  close() {
    for (const stub of Object.values(this.stubs)) stub.close();
  }

  deadline(seconds = this.deadlineSeconds) {
    return new Date(Date.now() + seconds * 1000);
  }

  /** The call's metadata: the token and a fresh `x-request-id` for tracing. */
  callMetadata() {
    const metadata = this.metadata.clone();
    metadata.set('x-request-id', crypto.randomUUID());
    return metadata;
  }

  /**
   * A unary call: resolves to the response; rejects with RpcError. `onTrailers(requestIdSent,
   * trailers)` sees the trailing metadata of a successful call.
   */
  call(service, method, request, seconds, onTrailers = () => {}) {
    return new Promise((resolve, reject) => {
      const metadata = this.callMetadata();
      const sent = metadata.get('x-request-id')[0];
      const call = this.stubs[service][method](request, metadata, { deadline: this.deadline(seconds) }, (error, response) => {
        if (error) reject(Object.assign(new RpcError(error, `${service}.${method}`), { requestIdSent: sent }));
        else resolve(response);
      });
      call.on('status', (status) => { if (status.code === grpc.status.OK) onTrailers(sent, status.metadata); });
    });
  }

  /** A server stream: resolves to every message once the stream ends. */
  collect(service, method, request, seconds, onMessage = () => {}) {
    return new Promise((resolve, reject) => {
      const messages = [];
      const stream = this.stubs[service][method](request, this.callMetadata(), { deadline: this.deadline(seconds) });
      stream.on('data', (message) => { messages.push(message); onMessage(message); });
      stream.on('error', (error) => reject(new RpcError(error, `${service}.${method}`)));
      stream.on('end', () => resolve(messages));
    });
  }

  /** SubmitModel: metadata, the zip in chunks of at most 1 MiB, a trailer with size and SHA-256. */
  submitModel(zipBytes, seconds = 600) {
    return new Promise((resolve, reject) => {
      const stream = this.stubs.ModelService.SubmitModel(this.callMetadata(), { deadline: this.deadline(seconds) }, (error, response) => {
        if (error) reject(new RpcError(error, 'ModelService.SubmitModel'));
        else resolve(response);
      });
      stream.write({ metadata: { request_id: crypto.randomUUID(), size_bytes: String(zipBytes.length) } });
      for (let at = 0; at < zipBytes.length; at += CHUNK) stream.write({ chunk: zipBytes.subarray(at, at + CHUNK) });
      const digest = crypto.createHash('sha256').update(zipBytes).digest('hex');
      stream.write({ trailer: { size_bytes: String(zipBytes.length), sha256: digest } });
      stream.end();
    });
  }

  async download(job, artifact) {
    const chunks = await this.collect('JobService', 'DownloadArtifact', { job, artifact }, 120);
    return Buffer.concat(chunks.map((c) => c.data));
  }

  /** Every page of a List call. */
  async list(service, method, field, request = {}) {
    const items = [];
    let pageToken = '';
    do {
      const page = await this.call(service, method, { ...request, page_token: pageToken });
      items.push(...page[field]);
      pageToken = page.next_page_token;
    } while (pageToken);
    return items;
  }
}

module.exports = { Client, RpcError };
