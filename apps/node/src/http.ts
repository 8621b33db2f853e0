import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { finished } from 'node:stream';
import { ChangelogError } from '@pfs/changelog-generator';
import {
  assertStoreInPlace,
  FilestoreError,
  fileStatOf,
  hashHandle,
  listStore,
  openStoreFile,
  partitionOf,
  type StagedFile,
  stageFile,
  storeIsInPlace,
  validateStorePath,
} from '@pfs/filestore';
import { encodeRecords, FEED_CONTENT_TYPE, parseFeedQuery, ReplicatorError, readFeed } from '@pfs/replicator';
import { formatTxId, generationOf, type LogRecord, parseTxId, TxlogError } from '@pfs/txlog';
import Fastify, { type FastifyReply, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { AgentState } from './agent-state.ts';
import { listQuarantine } from './divergence.ts';
import { FileDigestCache } from './file-digests.ts';
import type { PartitionController } from './partition-controller.ts';
import { filesInTheWayOfPut } from './path-conflicts.ts';
import {
  namesAnyVersion,
  noneMatchHits,
  parseRange,
  unsupportedWritePrecondition,
  writePreconditionOf,
} from './range.ts';
import { ACK_MODES, type AckMode } from './replica-acks.ts';

/**
 * The node's HTTP API (v1): files (PUT/GET/HEAD/DELETE), the change feed replicas follow, health
 * and status. Errors are JSON `{ code, message }`.
 */
const STATUS_OF_CODE: Record<string, number> = {
  PATH_CONFLICT: 409,
  PATH_EXISTS: 409,
  PRECONDITION_FAILED: 412,
  PATH_IS_DIRECTORY: 409,
  NOT_FOUND: 404,
  FILE_TOO_LARGE: 413,
  DISK_FULL: 507,
  STORE_MISSING: 503,
  CONTENT_MISMATCH: 400,
  NOT_MASTER: 503,
  BAD_FEED: 400,
  TXLOG_WRITE_FAILED: 507,
  NOT_LOGGED: 507,
  NOT_DURABLE: 507,
};

function sendError(reply: FastifyReply, error: unknown): FastifyReply {
  const code = (error as { code?: string }).code;
  if (
    error instanceof FilestoreError ||
    error instanceof ChangelogError ||
    error instanceof ReplicatorError ||
    error instanceof TxlogError
  ) {
    const status = STATUS_OF_CODE[error.code] ?? (error.code.startsWith('PATH_') ? 400 : 500);
    return reply.code(status).send({ code: error.code, message: error.message });
  }
  reply.log.error({ err: error }, 'unexpected error');
  return reply.code(500).send({ code: code ?? 'INTERNAL', message: (error as Error).message });
}

function writeResult(record: LogRecord, partition: number) {
  return {
    txid: record.txid.toString(),
    txidText: formatTxId(record.txid),
    partition,
    path: record.path,
    size: record.size.toString(),
    sha256: record.sha256 || undefined,
  };
}

export async function buildHttpServer(state: AgentState, logger: Logger) {
  const app = Fastify({
    loggerInstance: logger,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 16_384 },
    // Long polls of the change feed are answered within their wait; never close them early.
    requestTimeout: 0,
    // On shutdown the long polls have been answered already; what is left is idle keep-alive.
    forceCloseConnections: true,
  });
  // File bodies are streamed straight to disk: no parsing, no buffering.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null));
  // Whatever its type, a body is bytes: an empty or malformed content type ("", "text", "a/b c")
  // is no reason to refuse it, as fastify otherwise does (415).
  app.addHook('onRequest', async (request, reply) => {
    // Clients encode it (%23); one that does not would have the path cut at it, and another file
    // written, read or deleted than the one it named.
    if (request.raw.url?.includes('#')) {
      return reply.code(400).send({
        code: 'PATH_RAW_HASH',
        message: 'the URL holds a raw "#", which would cut the path there: encode it as %23',
      });
    }
    // The only body the API takes is a file's (PUT /v1/files/…): its type is never read.
    delete request.headers['content-type'];
  });

  // Every error of the API is `{ code, message }`, an unknown route's too (fastify's own 404
  // body has neither).
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send({
      code: 'NO_ROUTE',
      message: `no ${request.method} ${request.url.split('?')[0]} in this API: see docs/protocol.md (files are under /v1/files/)`,
    }),
  );

  const fileStore = join(state.config.dataDir, 'filestore');
  const digests = new FileDigestCache();

  /**
   * The partition's controller; undefined once a 503 is sent while the node starts (its HTTP
   * port opens before it has joined the cluster, so that a port in use fails the start at once).
   */
  const controllerOf = (partition: number, reply: FastifyReply): PartitionController | undefined => {
    const controller = state.controllers[partition];
    if (controller === undefined) {
      reply
        .code(503)
        .header('retry-after', '1')
        .send({
          code: 'STARTING',
          message: `this node is starting and does not serve partition ${partition} yet: retry shortly`,
        });
    }
    return controller;
  };

  /**
   * Whether a put refused for a file or directory in its way (`PATH_CONFLICT`,
   * `PATH_IS_DIRECTORY`) may go through now. What is in the way may be files of other
   * partitions, which this node holds as a replica: deleted by their masters just before this
   * put (a client that deletes `a`, then puts `a/b`), and not yet here. The replicas of those
   * partitions are given up to CONFLICT_CATCH_UP_MS to apply all their masters hold; true if
   * every one did, and the put is then tried once more. A file of a partition this node masters
   * is in the way for sure.
   */
  const mayBeCleared = async (
    error: unknown,
    code: 'PATH_CONFLICT' | 'PATH_IS_DIRECTORY',
  ): Promise<boolean> => {
    if (!(error instanceof FilestoreError) || error.path === undefined || error.code !== code) return false;
    const files = await filesInTheWayOfPut(fileStore, code, error.path).catch(() => undefined);
    if (files === undefined) return false;
    // Gone meanwhile: nothing to wait for.
    if (files.length === 0) return true;
    const holders = [...new Set(files.map((file) => partitionOf(file, state.config.partitions)))].map(
      (p) => state.controllers[p],
    );
    if (holders.some((c) => c === undefined || c.role !== 'replica')) return false;
    const caughtUp = (
      await Promise.all(holders.map((c) => c!.catchUpWithMaster(CONFLICT_CATCH_UP_MS)))
    ).every(Boolean);
    state.metrics.conflictWaits.inc({ result: caughtUp ? 'caught_up' : 'behind' });
    return caughtUp;
  };

  /** Refuses a write on a node that is not master of the path's partition: 307 to the master, else 503. */
  const refuseUnlessMaster = (partition: number, path: string, reply: FastifyReply): boolean => {
    const controller = controllerOf(partition, reply);
    if (controller === undefined) return true;
    if (controller.writable()) {
      // A bulk copy into this store overwrites nothing and deletes nothing, but it would bring
      // back a file deleted here after its source had it: writes wait for it to end.
      if (!state.controllers.some((c) => c.copyingStore)) return false;
      reply
        .code(503)
        .header('retry-after', '1')
        .send({
          code: 'STORE_COPY',
          message: `this node is copying its store from another master (it joined empty): writes to partition ${partition} resume when the copy ends, retry shortly`,
        });
      return true;
    }
    const master = state.masterOf(partition);
    if (master !== undefined && master.nodeId !== state.config.nodeId) {
      reply
        .code(307)
        .header('location', `http://${master.host}:${master.httpPort}/v1/files/${encodePath(path)}`)
        .send({
          code: 'NOT_MASTER',
          message: `${master.nodeId} is master of partition ${partition}: write there`,
        });
    } else {
      reply
        .code(503)
        .header('retry-after', '1')
        .send({
          code: 'NO_MASTER',
          message: `partition ${partition} has no master right now: retry shortly`,
        });
    }
    return true;
  };

  /** The validated path of a /v1/files/* request and its partition; undefined once a 400 is sent. */
  const fileTarget = (path: string, reply: FastifyReply): { path: string; partition: number } | undefined => {
    try {
      validateStorePath(path);
    } catch (error) {
      sendError(reply, error);
      return undefined;
    }
    return { path, partition: partitionOf(path, state.config.partitions) };
  };

  /** The ack mode and timeout of a write: headers x-pfs-ack / x-pfs-ack-timeout-ms, else the node's defaults. */
  const ackOf = (
    headers: Record<string, string | string[] | undefined>,
    reply: FastifyReply,
  ): { mode: AckMode; timeoutMs: number } | undefined => {
    const mode = headers['x-pfs-ack'] ?? state.config.ackMode;
    const asked = headers['x-pfs-ack-timeout-ms'];
    // Number('') is 0: an empty header would otherwise ask for no wait at all.
    const timeout =
      asked === undefined
        ? state.config.ackTimeoutMs
        : typeof asked === 'string' && asked.trim() !== ''
          ? Number(asked)
          : Number.NaN;
    if (typeof mode !== 'string' || !ACK_MODES.includes(mode as AckMode)) {
      reply
        .code(400)
        .send({ code: 'BAD_ACK_MODE', message: `x-pfs-ack must be one of ${ACK_MODES.join(', ')}` });
      return undefined;
    }
    if (!Number.isInteger(timeout) || timeout < 0 || timeout > 600_000) {
      reply
        .code(400)
        .send({ code: 'BAD_ACK_TIMEOUT', message: 'x-pfs-ack-timeout-ms must be an integer 0..600000' });
      return undefined;
    }
    return { mode: mode as AckMode, timeoutMs: timeout };
  };

  /** Answers a durable write, after waiting for the replicas its ack mode names (504 if they are late). */
  const answerWrite = async (
    reply: FastifyReply,
    record: LogRecord,
    partition: number,
    ack: { mode: AckMode; timeoutMs: number },
    status: number,
  ) => {
    // Fenced while this write committed or waited for its replicas, and no replica has it: it
    // is logged here, but the next master may not have drained it. Say so rather than
    // acknowledge it, or promise that it replicates.
    const outcomeUnknown = () =>
      reply
        .code(503)
        .header('retry-after', '1')
        .send({
          ...writeResult(record, partition),
          code: 'OUTCOME_UNKNOWN',
          message: `mastership of partition ${partition} was lost while ${formatTxId(record.txid)} committed: read the path back from the new master before relying on it`,
        });
    // Master still, and in the term that logged the record: a node fenced, cut back (the record
    // quarantined) and elected again is writable, and its replicas' acks, bare txids of the new
    // term, are past the record's.
    const sameTerm = () => {
      const controller = state.controllers[partition];
      return controller?.writable() === true && controller.generation === generationOf(record.txid);
    };
    if (!sameTerm()) return outcomeUnknown();
    state.metrics.writes.inc({ op: record.kind });
    if (record.kind === 'put') state.metrics.writeBytes.inc(Number(record.size));
    const result = { ...writeResult(record, partition), ack: ack.mode };
    if (ack.mode === 'local') return reply.code(status).send(result);
    const acked = await state.waitForAcks(partition, record.txid, ack.mode, ack.timeoutMs);
    // Fenced while it waited: a replica's ack may have come after the fence, and its report of
    // it (throttled) after the next vote ranked the members, so the next master may not have it.
    // While the lease still runs, no vote has begun, and the ack's report comes before one does.
    if (!sameTerm()) return outcomeUnknown();
    if (acked) return reply.code(status).send(result);
    return reply.code(504).send({
      ...result,
      code: 'ACK_TIMEOUT',
      message: `write ${formatTxId(record.txid)} is durable on this master but not yet acknowledged by ${ack.mode === 'one' ? 'any replica' : 'every live replica'} within ${ack.timeoutMs} ms: it replicates when they catch up`,
    });
  };

  app.get('/healthz', async () => ({ ok: true, nodeId: state.config.nodeId, pid: process.pid }));
  app.get('/v1/status', async () => state.status());
  app.get('/metrics', async (_request, reply) =>
    reply
      .header('content-type', state.metrics.registry.contentType)
      .send(await state.metrics.registry.metrics()),
  );
  app.get('/v1/quarantine', async () => ({
    entries: await listQuarantine(join(state.config.dataDir, 'quarantine')),
  }));

  app.get<{ Params: { p: string }; Querystring: Record<string, string> }>(
    '/v1/partitions/:p/records',
    async (request, reply) => {
      const partition = Number(request.params.p);
      const log = state.logs[partition];
      if (!Number.isInteger(partition) || log === undefined) {
        return reply
          .code(404)
          .send({ code: 'NO_PARTITION', message: `no partition ${request.params.p} here` });
      }
      let query: ReturnType<typeof parseFeedQuery>;
      try {
        query = parseFeedQuery(request.query);
      } catch (error) {
        return sendError(reply, error);
      }
      if (query.replica !== undefined) state.noteReplicaAck(partition, query.replica, query.after);
      // Replicas delete what the master lacks: never send them records while this store looks
      // empty or unmounted (its sentinel is gone).
      try {
        assertStoreInPlace(fileStore);
      } catch (error) {
        return sendError(reply, error);
      }
      const aborted = new AbortController();
      request.raw.once('close', () => aborted.abort());
      const release = state.trackPoll(aborted);
      if (release === undefined) {
        return reply
          .code(503)
          .send({ code: 'SHUTTING_DOWN', message: 'this node is stopping: follow the new master' });
      }
      try {
        const records = await readFeed(log, query, aborted.signal);
        const controller = state.controllers[partition];
        return (
          reply
            .header('content-type', FEED_CONTENT_TYPE)
            .header('x-pfs-last-txid', log.lastTxid.toString())
            // A node that is not master names the generation its log ends in, so that a follower
            // still pointed at a fenced old master sees it is behind the cluster and refuses it.
            .header(
              'x-pfs-generation',
              (controller?.role === 'master' ? controller.generation : generationOf(log.lastTxid)).toString(),
            )
            .send(encodeRecords(records))
        );
      } finally {
        release();
      }
    },
  );

  app.put<{ Params: { '*': string } }>('/v1/files/*', async (request, reply) => {
    const target = fileTarget(request.params['*'], reply);
    if (target === undefined) return reply;
    const unsupported = unsupportedWritePrecondition(request.headers);
    if (unsupported !== undefined) {
      await dropUnreadBody(request.raw, reply);
      return refusePrecondition(reply, 'PUT', unsupported);
    }
    const precondition = writePreconditionOf('PUT', request.headers);
    const { path, partition } = target;
    const ack = refuseUnlessMaster(partition, path, reply) ? undefined : ackOf(request.headers, reply);
    if (ack === undefined) {
      await dropUnreadBody(request.raw, reply);
      return reply;
    }
    const expected = request.headers['content-sha256'];
    // What can be told before a byte of the body is read is told then.
    if (expected !== undefined && (typeof expected !== 'string' || !/^[0-9a-fA-F]{64}$/.test(expected))) {
      await dropUnreadBody(request.raw, reply);
      return reply.code(400).send({
        code: 'BAD_CONTENT_SHA256',
        message: `content-sha256 must be the content's sha-256 as 64 hex digits, not ${JSON.stringify(String(expected).slice(0, 80))}`,
      });
    }
    const declared = Number(request.headers['content-length']);
    if (Number.isSafeInteger(declared) && declared > state.config.maxFileBytes) {
      await dropUnreadBody(request.raw, reply);
      return reply.code(413).send({
        code: 'FILE_TOO_LARGE',
        message: `${JSON.stringify(path)} is ${declared} bytes, over the ${state.config.maxFileBytes}-byte limit: split it or raise maxFileBytes`,
      });
    }
    if (precondition !== undefined) {
      const refused = await state.generator.precheck(path, precondition).then(
        () => undefined,
        (error: unknown) => error,
      );
      if (refused !== undefined) {
        await dropUnreadBody(request.raw, reply);
        return sendError(reply, refused);
      }
    }
    let staged: Awaited<ReturnType<typeof stageFile>> | undefined;
    try {
      // Not destroyed when staging stops early (limit, disk full): the answer still has to go out.
      // A client gone silent mid-upload (its host lost, a cable pulled) never closes the
      // connection: without a limit its temp file and handle would stay until the node stops.
      const body = withBodyLimits(
        request.raw.iterator({ destroyOnReturn: false }),
        { idleMs: state.config.bodyIdleTimeoutMs, minBytesPerSecond: state.config.bodyMinBytesPerSecond },
        (cause, bytes, waitedMs) =>
          request.raw.destroy(
            new FilestoreError(
              'ABORTED',
              cause === 'idle'
                ? `no bytes of the body of ${JSON.stringify(path)} for ${state.config.bodyIdleTimeoutMs} ms: the upload was dropped; send it again`
                : `the body of ${JSON.stringify(path)} came slower than ${state.config.bodyMinBytesPerSecond} bytes/s (${bytes} bytes in ${Math.round(waitedMs / 1000)} s): the upload was dropped; send it again over a faster link, or lower bodyMinBytesPerSecond`,
              { path },
            ),
          ),
      );
      const stage = () =>
        stageFile(fileStore, path, body, {
          maxBytes: state.config.maxFileBytes,
          ...(typeof expected === 'string' ? { expectedSha256: expected } : {}),
        });
      // A file in the way is found before a byte of the body is read: staged again, it is read
      // from the start.
      staged = await stage().catch(async (error: unknown) => {
        if (await mayBeCleared(error, 'PATH_CONFLICT')) return stage();
        throw error;
      });
      // The lease may have run out while the body streamed in: check again right before commit.
      if (refuseUnlessMaster(partition, path, reply)) {
        await staged.discard();
        return reply;
      }
      const commit = (file: StagedFile) =>
        state.generator.commitPut(file, {
          ifAbsent: namesAnyVersion(request.headers['if-none-match']),
          ...(precondition ? { precondition } : {}),
        });
      const committing = staged;
      const record = await commit(committing).catch(async (error: unknown) => {
        // Refused for a directory of files at the path, it is still staged (see StagedFile).
        if (await mayBeCleared(error, 'PATH_IS_DIRECTORY')) {
          if (refuseUnlessMaster(partition, path, reply)) return undefined;
          // A replica may have moved the directory holding the staged file meanwhile: the
          // refusal the client gets is still the conflict, not that.
          return commit(committing).catch((again: unknown) => {
            throw again instanceof FilestoreError ||
              again instanceof ChangelogError ||
              again instanceof TxlogError
              ? again
              : error;
          });
        }
        throw error;
      });
      if (record === undefined) {
        await staged.discard();
        return reply;
      }
      return answerWrite(reply, record, partition, ack, 201);
    } catch (error) {
      await staged?.discard();
      await dropUnreadBody(request.raw, reply);
      state.controllers[partition]?.checkLog();
      return sendError(reply, error);
    }
  });

  app.delete<{ Params: { '*': string } }>('/v1/files/*', async (request, reply) => {
    const target = fileTarget(request.params['*'], reply);
    if (target === undefined) return reply;
    const unsupported = unsupportedWritePrecondition(request.headers);
    if (unsupported !== undefined) return refusePrecondition(reply, 'DELETE', unsupported);
    const precondition = writePreconditionOf('DELETE', request.headers);
    const { path, partition } = target;
    const ack = ackOf(request.headers, reply);
    if (ack === undefined) return reply;
    try {
      if (refuseUnlessMaster(partition, path, reply)) return reply;
      const record = await state.generator.commitDelete(path, precondition ? { precondition } : {});
      return answerWrite(reply, record, partition, ack, 200);
    } catch (error) {
      state.controllers[partition]?.checkLog();
      return sendError(reply, error);
    }
  });

  // GET and HEAD share one handler; HEAD is declared rather than derived, because fastify's derived
  // HEAD route would read a stream to its end, or set content-length 0 without one.
  app.route<{ Params: { '*': string }; Querystring: { minTxid?: string; waitMs?: string } }>({
    method: ['GET', 'HEAD'],
    url: '/v1/files/*',
    exposeHeadRoute: false,
    handler: async (request, reply) => {
      const target = fileTarget(request.params['*'], reply);
      if (target === undefined) return reply;
      const { path, partition } = target;
      const controller = controllerOf(partition, reply);
      if (controller === undefined) return reply;
      const log = state.logs[partition]!;
      if (!controller.holds || (!controller.servesReads && !controller.readsRefused)) {
        // Not placed here, or not caught up since it was: the master answers for the partition.
        const master = state.masterOf(partition);
        if (master === undefined || master.nodeId === state.config.nodeId) {
          return reply
            .code(503)
            .header('retry-after', '1')
            .send({
              code: 'NO_MASTER',
              message: `partition ${partition} has no master right now and this node ${controller.holds ? 'has not caught up with it' : 'does not hold it'}: retry shortly`,
            });
        }
        const query = request.url.indexOf('?');
        return reply
          .code(307)
          .header(
            'location',
            `http://${master.host}:${master.httpPort}/v1/files/${encodePath(path)}${query === -1 ? '' : request.url.slice(query)}`,
          )
          .send({
            code: controller.holds ? 'NOT_CAUGHT_UP' : 'NOT_HELD',
            message: `${controller.holds ? 'this node has not caught up with' : 'this node does not hold'} partition ${partition}: read from its master, ${master.nodeId}`,
          });
      }
      if (controller.readsRefused) {
        return reply
          .code(503)
          .header('retry-after', '1')
          .send({
            code: 'STORE_CHECK',
            message: `this node was master of partition ${partition} and is checking its store against its log: read from another node or retry`,
          });
      }
      // Read-your-writes: wait until this node has applied the txid the client wrote.
      if (request.query.minTxid !== undefined) {
        let minTxid: bigint;
        try {
          minTxid = parseTxId(request.query.minTxid);
        } catch (error) {
          return reply.code(400).send({ code: 'BAD_TXID', message: (error as Error).message });
        }
        // Past the recorded end of its generation: lost when its master failed over, and no
        // later txid here (all of later generations) says it was applied.
        const lostAt = state.lostAt(partition, minTxid);
        if (lostAt !== undefined) {
          return reply.code(410).send({
            code: 'TXID_NOT_KEPT',
            message: `write ${formatTxId(minTxid)} was not kept: generation ${generationOf(minTxid)} of partition ${partition} ended at ${formatTxId(lostAt)} when its master failed over before a replica had it; write it again`,
          });
        }
        const waitMs = Math.min(Math.max(Number(request.query.waitMs ?? 2000) || 0, 0), 30_000);
        if (log.lastTxid < minTxid && !(await log.waitForRecordsAfter(minTxid - 1n, waitMs))) {
          return reply.code(409).send({
            code: 'NOT_CAUGHT_UP',
            message: `this node has applied ${formatTxId(log.lastTxid)}, not yet ${formatTxId(minTxid)}: retry or read from the master`,
            appliedTxid: log.lastTxid.toString(),
          });
        }
      }
      reply.header('x-pfs-applied-txid', log.lastTxid.toString());
      // One open file answers the request: its hash, its size and the bytes sent all come from
      // the same inode, even if a put replaces the path meanwhile.
      const opened = await openStoreFile(fileStore, path);
      if (opened === undefined) {
        // An unmounted store holds no file at all: that is no answer for what the log says is here.
        if (!storeIsInPlace(fileStore)) return storeMissing(reply);
        return reply.code(404).send({ code: 'NOT_FOUND', message: `no file ${JSON.stringify(path)}` });
      }
      const { handle, stat: info } = opened;
      let streaming = false;
      try {
        let sha256 = digests.get(path, info);
        if (sha256 === undefined) {
          const hashed = await digests.hashOnce(path, info, async () => {
            const { sha256: digest } = await hashHandle(handle, Number(info.size));
            const after = fileStatOf(await handle.stat({ bigint: true }));
            digests.remember(path, info, after, digest, BigInt(Date.now()) * 1_000_000n);
            return digest;
          });
          sha256 = hashed.sha256;
          state.metrics.readDigests.inc({ source: hashed.shared ? 'shared' : 'hashed' });
        } else {
          state.metrics.readDigests.inc({ source: 'cache' });
        }
        const etag = `"${sha256}"`;
        reply
          .header('etag', etag)
          .header('accept-ranges', 'bytes')
          .header('last-modified', new Date(Number(info.mtimeNs / 1_000_000n)).toUTCString());
        if (noneMatchHits(request.headers['if-none-match'], sha256)) return reply.code(304).send();
        const size = Number(info.size);
        // A resumed download names the version it has (If-Range): another version's bytes would
        // be joined to it, so a change, or a validator other than this ETag, gets the whole file.
        const ifRange = request.headers['if-range'];
        const range = parseRange(
          ifRange === undefined || ifRange === etag ? request.headers.range : undefined,
          size,
        );
        if (range === 'unsatisfiable') {
          return reply
            .code(416)
            .header('content-range', `bytes */${size}`)
            .send({ code: 'BAD_RANGE', message: `the file has ${size} bytes` });
        }
        const { start, end } = range ?? { start: 0, end: size - 1 };
        reply
          .code(range === undefined ? 200 : 206)
          .header('content-type', 'application/octet-stream')
          .header('content-length', String(end - start + 1));
        if (range !== undefined) reply.header('content-range', `bytes ${start}-${end}/${size}`);
        // HEAD gets the headers only; GET a stream that owns the handle from here on (it closes
        // it when it ends or is destroyed).
        if (request.method === 'HEAD' || end < start) return reply.send();
        streaming = true;
        // A reader that stops reading, its connection left open, would hold the file's handle
        // (and, once the file is replaced or deleted, its disk space) for good: dropped once
        // nothing has gone out for the body idle limit.
        const socket = request.raw.socket;
        // What the kernel took: written, less what still waits in the socket's own buffer. It
        // moves as the reader reads (a chunk of up to 64 KiB at a time, so a reader slower than
        // that per idle limit counts as stopped) and stays flat once it stopped.
        const taken = () => socket.bytesWritten - socket.writableLength;
        let seen = -1;
        const watchdog = setInterval(() => {
          if (taken() === seen) socket.destroy();
          seen = taken();
        }, state.config.bodyIdleTimeoutMs);
        watchdog.unref();
        // Also when the client left before this point (the response closed already).
        finished(reply.raw, () => clearInterval(watchdog));
        return reply.send(handle.createReadStream({ start, end }));
      } finally {
        if (!streaming) await handle.close();
      }
    },
  });

  app.get<{ Querystring: { prefix?: string; after?: string; limit?: string; partitions?: string } }>(
    '/v1/files',
    async (request, reply) => {
      const asked = request.query.limit ?? '1000';
      // Any whole number: one past 10 000, however many digits, counts as 10 000.
      if (!/^\d+$/.test(asked)) {
        return reply.code(400).send({
          code: 'BAD_LIMIT',
          message: `limit must be a whole number of entries, 1 to 10000, not ${JSON.stringify(asked)}`,
        });
      }
      const count = state.config.partitions;
      const wanted = request.query.partitions;
      if (
        wanted !== undefined &&
        (!/^\d{1,9}(,\d{1,9})*$/.test(wanted) || wanted.split(',').some((p) => Number(p) >= count))
      ) {
        return reply.code(400).send({
          code: 'BAD_PARTITIONS',
          message: `partitions must be comma-separated partition numbers, 0 to ${count - 1}, not ${JSON.stringify(wanted.slice(0, 100))}`,
        });
      }
      const asking = wanted === undefined ? undefined : new Set(wanted.split(',').map(Number));
      // Only partitions whose reads this node answers: the others are listed by the nodes that
      // hold them (the response names the partitions it covers).
      // Not one whose reads are refused while its store is checked: that store may hold files
      // its log does not.
      const covered = state.controllers
        .filter((c) => c.servesReads && !c.readsRefused && (asking === undefined || asking.has(c.partition)))
        .map((c) => c.partition);
      if (covered.length > 0 && !storeIsInPlace(fileStore)) return storeMissing(reply);
      const included = new Set(covered);
      const limit = Math.min(Math.max(Number(asked), 1), 10_000);
      const page = await listStore(fileStore, {
        limit,
        ...(request.query.prefix === undefined ? {} : { prefix: request.query.prefix }),
        ...(request.query.after === undefined ? {} : { after: request.query.after }),
        ...(included.size === count ? {} : { include: (path) => included.has(partitionOf(path, count)) }),
      });
      return {
        entries: page.entries.map((e) => ({
          path: e.path,
          size: e.stat.size.toString(),
          mtime: new Date(Number(e.stat.mtimeNs / 1_000_000n)).toISOString(),
        })),
        next: page.next ?? null,
        partitions: covered,
        partitionCount: count,
      };
    },
  );

  return app;
}

/** 400 for a precondition (`header`) a write would otherwise go ahead without. */
function refusePrecondition(reply: FastifyReply, method: 'PUT' | 'DELETE', header: string): FastifyReply {
  return reply.code(400).send({
    code: 'PRECONDITION_UNSUPPORTED',
    message: `${method} with ${header} is not supported, and the write was not made: send it without ${header} (if-match with the file's ETag makes a write conditional on its version)`,
  });
}

/** 503 for a read of a store that is not in place (see storeIsInPlace): other nodes may answer it. */
function storeMissing(reply: FastifyReply): FastifyReply {
  return reply.code(503).header('retry-after', '1').send({
    code: 'STORE_MISSING',
    message:
      "this node's store is not in place (unmounted?): read from another node, and mount the store here",
  });
}

/** The limits a PUT's body must keep to (see nextChunkDeadline). */
export interface BodyLimits {
  idleMs: number;
  minBytesPerSecond: number;
}

/**
 * How long the next chunk of a body may take, and which limit ends it, given the body's balance
 * (see bodyBalanceAfter; pure). Each chunk may take `idleMs`; in all, the waits may take `idleMs`
 * plus what the bytes received earned. A body that trickles a byte now and then, just inside the
 * idle limit, so runs out of time: it would hold a connection and a temp file for as long as its
 * sender likes.
 */
export function nextChunkDeadline(
  balanceMs: number,
  limits: BodyLimits,
): { ms: number; cause: 'idle' | 'slow' } {
  return balanceMs < 0
    ? { ms: Math.max(0, limits.idleMs + balanceMs), cause: 'slow' }
    : { ms: limits.idleMs, cause: 'idle' };
}

/**
 * The balance of a body after a wait of `waitedMs` for a chunk of `bytes` (pure): each byte
 * earns 1000 / `minBytesPerSecond` ms, each wait spends its length. What is banked is capped at
 * ten idle limits, so that a fast start cannot buy a trickle of days afterwards.
 */
export function bodyBalanceAfter(
  balanceMs: number,
  waitedMs: number,
  bytes: number,
  limits: BodyLimits,
): number {
  return Math.min(
    balanceMs - waitedMs + (bytes * 1000) / limits.minBytesPerSecond,
    BANKED_IDLE_LIMITS * limits.idleMs,
  );
}

const BANKED_IDLE_LIMITS = 10;

/**
 * Yields `source`'s chunks, calling `onStall` when the next one has not come within the limits
 * (nextChunkDeadline). Time spent by the consumer on a chunk does not count: a slow disk is not
 * a slow client.
 */
export async function* withBodyLimits<T extends { length: number }>(
  source: AsyncIterable<T>,
  limits: BodyLimits,
  onStall: (cause: 'idle' | 'slow', bytes: number, waitedMs: number) => void,
): AsyncGenerator<T> {
  const chunks = source[Symbol.asyncIterator]();
  let bytes = 0;
  let waitedMs = 0;
  let balanceMs = 0;
  try {
    for (;;) {
      const deadline = nextChunkDeadline(balanceMs, limits);
      const askedAt = performance.now();
      const timer = setTimeout(() => onStall(deadline.cause, bytes, waitedMs + deadline.ms), deadline.ms);
      let next: IteratorResult<T>;
      try {
        next = await chunks.next();
      } finally {
        clearTimeout(timer);
      }
      const waited = performance.now() - askedAt;
      waitedMs += waited;
      if (next.done === true) return;
      bytes += next.value.length;
      balanceMs = bodyBalanceAfter(balanceMs, waited, next.value.length, limits);
      yield next.value;
    }
  } finally {
    await chunks.return?.();
  }
}

/**
 * How long a put refused for a file or directory in its way waits for this node's replicas of
 * the partitions holding them (see mayBeCleared): a replica a few records behind catches up in
 * milliseconds; one further behind is not waited for.
 */
const CONFLICT_CATCH_UP_MS = 1000;

const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;
const DRAIN_MS = 5000;

/**
 * A PUT answered before its body was read (redirect, refusal, error): read and drop the rest, so
 * the client sees the answer rather than a stalled upload; past 64 MiB or 5 s, close the
 * connection after the answer instead.
 */
async function dropUnreadBody(raw: IncomingMessage, reply: FastifyReply): Promise<void> {
  if (raw.complete || raw.readableEnded || raw.destroyed) return;
  let dropped = 0;
  const drained = await new Promise<boolean>((resolve) => {
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
      resolve(ok);
    };
    const onData = (chunk: Buffer) => {
      dropped += chunk.length;
      if (dropped > DRAIN_LIMIT_BYTES) finish(false);
    };
    const onEnd = () => finish(true);
    const onError = () => finish(false);
    const timer = setTimeout(() => finish(false), DRAIN_MS);
    raw.on('data', onData);
    raw.once('end', onEnd);
    raw.once('error', onError);
    raw.resume();
  });
  if (!drained) reply.header('connection', 'close');
}

/** Percent-encodes each path component for a URL. */
export function encodePath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}
