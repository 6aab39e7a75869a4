#!/usr/bin/env node
// Example dicom-bridge consumer in Node.js: answers N-EVENT-REPORT and C-STORE.
//
// Written against the contract only: schemas/*.json and docs/protocol.md ("Routing keys",
// "The envelope", "The reply", "Large instances: claim-check"). See README.md beside
// this file for how to run it and how it maps to that contract.

import { readFileSync, realpathSync } from 'node:fs';
import { stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import amqp from 'amqplib';

const HERE = path.dirname(fileURLToPath(import.meta.url));

// Statuses (PS3.4 / PS3.7) this consumer sends.
const SUCCESS = 0x0000;
const PROCESSING_FAILURE = 0x0110; // N-*: the consumer failed
const NO_SUCH_EVENT_TYPE = 0x0113;
const STORE_CANNOT_UNDERSTAND = 0xc000; // C-STORE: the envelope fails the schema
const STORE_DATASET_MISMATCH = 0xa900; // C-STORE: "Data Set does not match SOP Class"
const STORE_FAILURE = 0xc211; // C-STORE: the consumer failed (0xCxxx: Cannot understand)

const STORAGE_COMMITMENT_PUSH = '1.2.840.10008.1.20.1';
const TAG = {
  sopInstanceUid: '00080018',
  modality: '00080060',
  transactionUid: '00081195',
  referencedSopSequence: '00081199',
  failedSopSequence: '00081198',
};
const BINDINGS = ['n-event-report.#', 'c-store.#'];
const KNOWN_UIDS_LIMIT = 100_000;

// --- configuration: flags win over environment variables, which win over defaults -------

function truthy(value) {
  return ['1', 'true', 'yes', 'on'].includes(String(value ?? '').toLowerCase());
}

function config() {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      exchange: { type: 'string' },
      queue: { type: 'string' },
      exclusive: { type: 'boolean' },
      prefetch: { type: 'string' },
      'bulk-dir': { type: 'string' },
      'schema-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(
      [
        'usage: node consumer.js [options]',
        '  --url URL          BRIDGE_AMQP_URL   amqp://guest:guest@127.0.0.1:5672/',
        '  --exchange NAME    BRIDGE_EXCHANGE   dicom',
        '  --queue NAME       BRIDGE_QUEUE      dicom-bridge.node-consumer',
        '  --exclusive        BRIDGE_EXCLUSIVE  off (1: the queue is exclusive and auto-delete)',
        '  --prefetch N       BRIDGE_PREFETCH   16',
        '  --bulk-dir DIR     BRIDGE_BULK_DIR   ~/.cache/dicom-bridge/bulk',
        '  --schema-dir DIR   BRIDGE_SCHEMA_DIR ../../schemas from this file',
        '',
      ].join('\n'),
    );
    process.exit(0);
  }
  const env = process.env;
  const cache = env.XDG_CACHE_HOME || path.join(homedir(), '.cache');
  const prefetch = Number(values.prefetch ?? env.BRIDGE_PREFETCH ?? 16);
  if (!Number.isInteger(prefetch) || prefetch < 1 || prefetch > 65535) {
    fail(`invalid prefetch ${JSON.stringify(values.prefetch ?? env.BRIDGE_PREFETCH)}: 1..65535`);
  }
  return {
    url: values.url ?? env.BRIDGE_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/',
    exchange: values.exchange ?? env.BRIDGE_EXCHANGE ?? 'dicom',
    queue: values.queue ?? env.BRIDGE_QUEUE ?? 'dicom-bridge.node-consumer',
    exclusive: values.exclusive ?? truthy(env.BRIDGE_EXCLUSIVE),
    prefetch,
    bulkDir: values['bulk-dir'] ?? env.BRIDGE_BULK_DIR ?? path.join(cache, 'dicom-bridge', 'bulk'),
    schemaDir:
      values['schema-dir'] ?? env.BRIDGE_SCHEMA_DIR ?? path.join(HERE, '..', '..', 'schemas'),
  };
}

function log(line) {
  process.stdout.write(`${line}\n`);
}

function warn(line) {
  process.stderr.write(`${line}\n`);
}

function fail(message) {
  warn(`error: ${message}`);
  process.exit(1);
}

/** The URL without its password, for logs. */
function redact(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '<unparsable AMQP URL>';
  }
}

// --- the contract: JSON Schemas -----------------------------------------------------------

const ENVELOPE_ID = 'https://dicom-bridge.dev/schemas/envelope.schema.json';
const REPLY_ID = 'https://dicom-bridge.dev/schemas/reply.schema.json';

function loadSchemas(dir) {
  // strictTypes off: the schemas put "items" on "Value" in if/then branches without
  // repeating "type": "array" (valid JSON Schema, which Ajv's strict mode would warn about).
  const ajv = new Ajv2020({ allErrors: true, allowUnionTypes: true, strictTypes: false });
  addFormats(ajv);
  for (const name of ['dicom-json.schema.json', 'envelope.schema.json', 'reply.schema.json']) {
    const file = path.join(dir, name);
    let schema;
    try {
      schema = JSON.parse(readFileSync(file, 'utf8'));
    } catch (error) {
      fail(`cannot read the schema ${file}: ${error.message} (set BRIDGE_SCHEMA_DIR)`);
    }
    ajv.addSchema(schema); // registered under its $id
  }
  return { envelope: ajv.getSchema(ENVELOPE_ID), reply: ajv.getSchema(REPLY_ID) };
}

/** Validation errors as "path: message" without the offending values (patient data). */
function schemaErrors(validate) {
  return (validate.errors ?? [])
    .slice(0, 3)
    .map((e) => `${e.instancePath || '/'} ${e.message}`)
    .join('; ');
}

/** An Error Comment (0000,0902) is a LO: at most 64 characters, no backslash. */
function comment(text) {
  return text.replaceAll('\\', '/').slice(0, 64);
}

// --- DICOM JSON helpers -------------------------------------------------------------------

function first(dataset, tag) {
  const value = dataset?.[tag]?.Value;
  return Array.isArray(value) && value.length > 0 ? value[0] : undefined;
}

/**
 * Every claim-check file URI in a dataset, nested sequences included. A BulkDataURI that
 * starts with "?" ("?offset=O&length=L") names bytes of the envelope's Part 10 file, not a
 * file of its own.
 */
function bulkDataUris(dataset, found = []) {
  for (const attribute of Object.values(dataset ?? {})) {
    const uri = attribute.BulkDataURI;
    if (typeof uri === 'string' && !uri.startsWith('?')) found.push(uri);
    if (attribute.vr === 'SQ') {
      for (const item of attribute.Value ?? []) bulkDataUris(item, found);
    }
  }
  return found;
}

// --- the handlers: envelope -> reply ------------------------------------------------------

class Handlers {
  constructor(bulkDir) {
    this.bulkDir = bulkDir;
    this.storedUids = new Set(); // insertion-ordered: the oldest are dropped past the limit
  }

  /**
   * Claim-check: the files a C-STORE refers to (its Part 10 file when that is too large to
   * travel inline, and any files of its dataset), checked to be in bulkDir.
   */
  async claimedFiles(envelope) {
    const uris = bulkDataUris(envelope?.dataset);
    if (typeof envelope?.part10?.BulkDataURI === 'string') uris.push(envelope.part10.BulkDataURI);
    const files = [];
    let root;
    try {
      root = realpathSync(this.bulkDir);
    } catch {
      root = path.resolve(this.bulkDir);
    }
    for (const uri of uris) {
      if (!uri.startsWith('file://')) throw new Error('BulkDataURI is not a file:// URI');
      const file = fileURLToPath(uri);
      const inside = path.relative(root, realpathSync(file));
      if (inside.startsWith('..') || path.isAbsolute(inside)) {
        throw new Error('BulkDataURI outside the claim-check directory');
      }
      files.push({ file, size: (await stat(file)).size });
    }
    return files;
  }

  async cStore(envelope, who, after) {
    const dataset = envelope.dataset ?? {};
    const sopInstanceUid = first(dataset, TAG.sopInstanceUid);
    const modality = first(dataset, TAG.modality) ?? '-';
    if (typeof sopInstanceUid !== 'string') {
      log(`C-STORE ${envelope.sop_class_uid} ${who}: no SOP Instance UID, refused`);
      return {
        status: STORE_DATASET_MISMATCH,
        error_comment: 'dataset has no SOP Instance UID (0008,0018)',
      };
    }
    const files = await this.claimedFiles(envelope);
    const bulk = files.reduce((sum, f) => sum + f.size, 0);
    // A real consumer would keep the instance here: envelope.part10 is the data set as
    // received, a DICOM Part 10 file (InlineBinary, base64, or a claim-check BulkDataURI),
    // to be written as it is. The claim-check files are deleted by their reader once the
    // reply is confirmed and the request acked.
    after.push(...files.map((f) => f.file));
    this.storedUids.delete(sopInstanceUid);
    this.storedUids.add(sopInstanceUid);
    if (this.storedUids.size > KNOWN_UIDS_LIMIT) {
      this.storedUids.delete(this.storedUids.values().next().value);
    }
    log(
      `C-STORE ${envelope.sop_class_uid} ${modality} ${sopInstanceUid} ${who}` +
        (files.length ? `, ${files.length} bulk file(s), ${bulk} bytes` : '') +
        `, ${this.storedUids.size} instance(s) known`,
    );
    return { status: SUCCESS };
  }

  nEventReport(envelope, who) {
    const eventType = envelope.request.event_type_id;
    const info = envelope.event_information ?? {};
    if (envelope.sop_class_uid === STORAGE_COMMITMENT_PUSH && eventType !== 1 && eventType !== 2) {
      log(`N-EVENT-REPORT ${envelope.sop_class_uid} event ${eventType} ${who}: no such event type`);
      return { status: NO_SUCH_EVENT_TYPE, error_comment: 'no such event type' };
    }
    const transactionUid = first(info, TAG.transactionUid);
    const committed = info[TAG.referencedSopSequence]?.Value?.length ?? 0;
    const failed = info[TAG.failedSopSequence]?.Value?.length ?? 0;
    log(
      `N-EVENT-REPORT ${envelope.sop_class_uid} event ${eventType} ${who}` +
        (transactionUid ? `, transaction ${transactionUid}` : '') +
        (envelope.sop_class_uid === STORAGE_COMMITMENT_PUSH
          ? `, ${committed} committed, ${failed} failed`
          : ''),
    );
    // The Event Reply: echo the Transaction UID when the event carried one.
    const reply = { status: SUCCESS };
    if (typeof transactionUid === 'string') {
      reply.dataset = { [TAG.transactionUid]: { vr: 'UI', Value: [transactionUid] } };
    }
    return reply;
  }

  /** The reply to a valid envelope; ``after`` collects files to delete after the ack. */
  async answer(envelope, after) {
    const caller = envelope.association.calling_ae || '-';
    const who = `from ${caller}, message ${envelope.request.message_id}`;
    switch (envelope.service) {
      case 'c-store':
        return this.cStore(envelope, who, after);
      case 'n-event-report':
        return this.nEventReport(envelope, who);
      default:
        return undefined;
    }
  }
}

/** A failure reply: N-* get Processing Failure; C-STORE gets ``storeStatus``. */
function failureFor(service, text, storeStatus = STORE_FAILURE) {
  const status = service === 'c-store' ? storeStatus : PROCESSING_FAILURE;
  return { status, error_comment: comment(text) };
}

// --- AMQP ---------------------------------------------------------------------------------

async function main() {
  const cfg = config();
  const validate = loadSchemas(cfg.schemaDir);
  const handlers = new Handlers(cfg.bulkDir);

  let connection;
  try {
    connection = await amqp.connect(cfg.url, {
      clientProperties: { connection_name: 'dicom-bridge node-consumer' },
    });
  } catch (error) {
    const reason = error.code ?? error.message;
    fail(`cannot connect to the broker at ${redact(cfg.url)}: ${reason} (is RabbitMQ running?)`);
  }
  let stopping = false;
  connection.on('error', (error) => warn(`broker connection error: ${error.message}`));
  connection.on('close', () => {
    if (!stopping) {
      warn('error: connection to the broker lost; exiting (run me under a supervisor)');
      process.exit(1);
    }
  });

  const consumeChannel = await connection.createChannel();
  const replyChannel = await connection.createConfirmChannel();
  for (const channel of [consumeChannel, replyChannel]) {
    channel.on('error', (error) => warn(`channel error: ${error.message}`));
    channel.on('close', () => {
      if (!stopping) {
        warn('error: a channel to the broker closed; exiting');
        process.exit(1);
      }
    });
  }
  // mandatory: true -> a reply whose reply queue is gone comes back here.
  replyChannel.on('return', (message) => {
    warn(
      `reply ${message.properties.correlationId} returned by the broker ` +
        `(${message.fields.replyText}): the bridge is gone`,
    );
  });

  await consumeChannel.assertExchange(cfg.exchange, 'topic', { durable: true });
  // Exclusive: gone with this connection (tests). Otherwise a durable quorum queue that keeps
  // requests while the consumer restarts (delete it when you retire the consumer).
  const { queue } = await consumeChannel.assertQueue(
    cfg.queue,
    cfg.exclusive
      ? { exclusive: true, autoDelete: true, durable: false }
      : { durable: true, arguments: { 'x-queue-type': 'quorum' } },
  );
  for (const pattern of BINDINGS) await consumeChannel.bindQueue(queue, cfg.exchange, pattern);
  await consumeChannel.prefetch(cfg.prefetch);

  function publishReply(replyTo, correlationId, reply) {
    const body = Buffer.from(JSON.stringify(reply));
    const options = {
      correlationId,
      contentType: 'application/json',
      mandatory: true,
    };
    return new Promise((resolve, reject) => {
      replyChannel.publish('', replyTo, body, options, (error) =>
        error ? reject(error) : resolve(),
      );
    });
  }

  async function handle(message) {
    const { correlationId, replyTo } = message.properties;
    let envelope;
    try {
      envelope = JSON.parse(message.content.toString('utf8'));
    } catch {
      warn(`dropped message ${correlationId}: not JSON`);
      consumeChannel.reject(message, false);
      return;
    }
    const service = typeof envelope?.service === 'string' ? envelope.service : '?';
    const after = [];
    let reply;
    if (!validate.envelope(envelope)) {
      const errors = schemaErrors(validate.envelope);
      warn(`envelope ${correlationId} (${service}) fails the schema: ${errors}`);
      if (!['c-store', 'n-event-report'].includes(service)) {
        consumeChannel.reject(message, false);
        return;
      }
      reply = failureFor(service, 'envelope fails the schema', STORE_CANNOT_UNDERSTAND);
    } else if (Date.parse(envelope.deadline) <= Date.now()) {
      // The bridge has answered the peer already; a reply would be dropped.
      log(`skipped ${service} ${envelope.id}: past its deadline ${envelope.deadline}`);
      consumeChannel.ack(message);
      if (service === 'c-store') {
        // Nobody will read this request's claim-check files: done with them.
        const files = await handlers.claimedFiles(envelope).catch(() => []);
        for (const { file } of files) await unlink(file).catch(() => {});
      }
      return;
    } else {
      try {
        reply = await handlers.answer(envelope, after);
      } catch (error) {
        warn(`${service} ${envelope.id} failed: ${error.message}`);
        reply = failureFor(service, 'consumer error');
        after.length = 0;
      }
      if (reply === undefined) {
        warn(`dropped ${service} ${envelope.id}: not a service this consumer answers`);
        consumeChannel.reject(message, false);
        return;
      }
    }
    // A bug must not reach the broker: an invalid reply becomes a failure status.
    if (!validate.reply(reply)) {
      const errors = schemaErrors(validate.reply);
      warn(`bug: reply to ${service} ${correlationId} fails the schema: ${errors}`);
      reply = failureFor(service, 'consumer produced an invalid reply');
      after.length = 0;
    }
    if (!replyTo || !correlationId) {
      warn(`${service} ${correlationId}: no reply_to or correlation_id, nothing to answer`);
      consumeChannel.ack(message);
      return;
    }
    try {
      await publishReply(replyTo, correlationId, reply);
    } catch (error) {
      warn(`reply to ${service} ${correlationId} not confirmed (${error.message}); requeueing`);
      consumeChannel.nack(message, false, true);
      return;
    }
    consumeChannel.ack(message);
    // Claim-check: the reader deletes the files once it is done with them.
    for (const file of after) await unlink(file).catch(() => {});
  }

  const inFlight = new Set();
  const { consumerTag } = await consumeChannel.consume(queue, (message) => {
    if (message === null) {
      warn('error: the broker cancelled the consumer (queue deleted?); exiting');
      process.exit(1);
    }
    const job = handle(message)
      .catch((error) => warn(`unexpected: ${error.stack ?? error}`))
      .finally(() => inFlight.delete(job));
    inFlight.add(job);
  });

  async function shutdown(signal) {
    if (stopping) {
      warn(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    log(`${signal}: stopping, ${inFlight.size} request(s) in flight`);
    try {
      await consumeChannel.cancel(consumerTag); // no new deliveries
      // Finish what was delivered (up to 10 s); the broker requeues anything left unacked.
      const giveUp = Date.now() + 10_000;
      while (inFlight.size > 0 && Date.now() < giveUp) {
        await Promise.race([
          Promise.allSettled([...inFlight]),
          new Promise((resolve) => setTimeout(resolve, giveUp - Date.now()).unref()),
        ]);
      }
      await consumeChannel.close();
      await replyChannel.close();
      await connection.close();
    } catch (error) {
      warn(`error while closing: ${error.message}`);
      process.exit(1);
    }
    log('stopped');
    // Let stdout drain and the loop end by itself; force it only if something lingers.
    process.exitCode = 0;
    setTimeout(() => process.exit(0), 2_000).unref();
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  log(
    `ready: consuming ${queue} on exchange ${cfg.exchange} (${BINDINGS.join(', ')}), ` +
      `prefetch ${cfg.prefetch}, broker ${redact(cfg.url)}`,
  );
}

main().catch((error) => fail(error.message));
