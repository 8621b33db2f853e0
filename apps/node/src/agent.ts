import { randomUUID } from 'node:crypto';
import { readFile, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChangelogGenerator, followWatcher } from '@pfs/changelog-generator';
import { Coordinator, CoordinatorError, reportedByCurrentProcess } from '@pfs/coordinator-etcd';
import { escapeNameBytes, initStore, SENTINEL_FILE, storeIsInPlace } from '@pfs/filestore';
import { discardBulkCopyStaging, StoreGate } from '@pfs/replicator';
import { rsyncVersion } from '@pfs/rsync-invoker';
import { formatTxId, generationOf, mkdirDurable, TxLog, writeFileAtomic } from '@pfs/txlog';
import type { StoreWatcher } from '@pfs/watcher';
import type { Logger } from 'pino';
import type { AgentState } from './agent-state.ts';
import type { NodeConfig } from './config.ts';
import { lockDataDir } from './data-dir-lock.ts';
import { agreedByHistory } from './divergence.ts';
import { buildHttpServer } from './http.ts';
import { createMetrics } from './metrics.ts';
import { PartitionController } from './partition-controller.ts';
import { PartitionPlacement } from './placement.ts';
import { ackingReplicas, ackSatisfied, ReplicaAcks } from './replica-acks.ts';
import { type RsyncDaemon, startRsyncDaemon } from './rsync-daemon.ts';
import { StoreChecks } from './store-checks.ts';
import { WarningThrottle } from './warning-throttle.ts';

/**
 * The node agent: opens the partition logs, runs the rsync daemon and the HTTP server, registers
 * with etcd, and drives one PartitionController per partition. Which partitions it holds follows
 * the placement (every partition with the default replication factor), and the masters are
 * spread by the election (see docs/architecture.md).
 */
export interface Agent {
  readonly config: NodeConfig;
  readonly state: AgentState;
  readonly url: string;
  /** Graceful stop: hand over mastership, stop children, release the lease. Idempotent. */
  close(): Promise<void>;
}

export class AgentStartError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

const HANDOVER_TIMEOUT_MS = 1000;
/** How often one kind of watcher error is logged at most (a store of many directories fails them one by one). */
const WATCHER_WARNING_INTERVAL_MS = 60_000;
/** statfs(2)'s f_type of a tmpfs (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;
/** How often a long etcd outage is told (see 'session-retry-failed'). */
const OUTAGE_WARNING_INTERVAL_MS = 10_000;
/** How often a name that is not UTF-8 is told at most (each reconcile walk finds it again). */
const NAME_WARNING_INTERVAL_MS = 60_000;
/** How long a stopping master keeps serving its records to a successor that must drain them. */
const SUCCESSOR_WAIT_MS = 5000;

/** Whether another node serves each of `partitions` within SUCCESSOR_WAIT_MS. */
async function successorsServing(coord: Coordinator, partitions: number[], ownId: string): Promise<boolean> {
  const deadline = performance.now() + SUCCESSOR_WAIT_MS;
  const served = () =>
    partitions.every((p) => {
      const master = coord.view.partitions.get(p)?.master;
      return master !== undefined && master.nodeId !== ownId && master.state === 'serving';
    });
  while (!served()) {
    if (performance.now() >= deadline) return false;
    await sleep(20);
  }
  return true;
}

export async function startAgent(config: NodeConfig, logger: Logger): Promise<Agent> {
  const cleanups: (() => Promise<void>)[] = [];
  const undo = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    return await start(config, logger, cleanups);
  } catch (error) {
    await undo();
    throw withFix(error, config.dataDir);
  }
}

/** What to do about a file system error at start, whose own text names only the call and path. */
const NOT_PERMITTED = `this user (uid ${process.getuid?.()}) may not write there: give it the data dir, or another --data-dir`;
const FILE_IN_THE_WAY = 'a file is where the data dir needs a directory: move it, or give another --data-dir';
const FIXES: Record<string, string> = {
  EACCES: NOT_PERMITTED,
  EPERM: NOT_PERMITTED,
  EROFS: 'the file system is mounted read-only: remount it read-write, or give another --data-dir',
  ENOSPC: 'the disk is full: free space and start again (nothing stored was removed)',
  EDQUOT: 'the disk quota is used up: free space and start again (nothing stored was removed)',
  ENOTDIR: FILE_IN_THE_WAY,
  EEXIST: FILE_IN_THE_WAY,
};

export function withFix(error: unknown, dataDir: string): unknown {
  const { code, path } = error as NodeJS.ErrnoException;
  // Only errors about the data dir: a `listen` refused (EACCES on a port below 1024) is not one.
  if (
    !(error instanceof Error) ||
    path === undefined ||
    !(path === dataDir || path.startsWith(`${dataDir}/`))
  )
    return error;
  const fix = code === undefined ? undefined : FIXES[code];
  return fix === undefined ? error : new AgentStartError('DATA_DIR_UNUSABLE', `${error.message}: ${fix}`);
}

async function start(config: NodeConfig, logger: Logger, cleanups: (() => Promise<void>)[]): Promise<Agent> {
  const fileStore = join(config.dataDir, 'filestore');
  // Made durably: a directory the power took with it would take its logs, marks and files along.
  await mkdirDurable(join(config.dataDir, 'run'));
  // Before anything in the data dir is opened, cut or started.
  const lock = await lockDataDir(config.dataDir, config.nodeId);
  cleanups.push(() => lock.release());
  // The default data dir is under /tmp, as in the seed, and /tmp is a tmpfs on many systems.
  if ((await statfs(config.dataDir).catch(() => undefined))?.type === TMPFS_MAGIC) {
    logger.warn(
      { dataDir: config.dataDir },
      `data dir ${config.dataDir} is on a tmpfs, in memory: what this node stores is gone at its machine's next reboot, with any write no other node has yet; give it a --data-dir on a disk`,
    );
  }
  for (const dir of ['filestore', 'changelog', 'checkpoint', 'quarantine']) {
    await mkdirDurable(join(config.dataDir, dir));
  }
  // Checked before initStore makes one: a store without its sentinel is new, or not mounted.
  const storeWasInPlace = storeIsInPlace(fileStore);
  const logs: TxLog[] = [];
  for (let p = 0; p < config.partitions; p++) {
    const log = await TxLog.open(join(config.dataDir, 'changelog', String(p)));
    if (log.openReport.tornTail) {
      logger.warn({ partition: p, ...log.openReport.tornTail }, `partition ${p}: cut a torn log tail`);
    }
    logs.push(log);
    cleanups.push(() => log.close());
  }
  // Logged files and no sentinel: a fresh sentinel would vouch for an empty mount point, whose
  // reconcile would log every file as deleted, and whose feed would hand that to the replicas.
  const logged = logs.findIndex((log) => log.lastTxid > 0n);
  if (!storeWasInPlace && logged !== -1) {
    throw new AgentStartError(
      'STORE_MISSING',
      `${fileStore} has no ${SENTINEL_FILE} but partition ${logged}'s log holds records: the store looks unmounted or replaced; mount it (or put the sentinel back if this is the right store), or remove ${join(config.dataDir, 'changelog')} and ${join(config.dataDir, 'checkpoint')} to rejoin as a new replica`,
    );
  }
  await initStore(fileStore);
  // A bulk copy this node's previous run was killed during left its staging directory (under
  // .pfs/, where nothing looks): removed in the background, it only takes space.
  const { removed: stagingRemoved } = await discardBulkCopyStaging(fileStore);
  stagingRemoved.catch((error: Error) =>
    logger.warn({ err: error }, `removing an unfinished bulk copy failed: ${error.message}`),
  );
  const version = await rsyncVersion(config.rsyncBin);
  logger.info({ rsync: version }, `rsync ${version}`);

  const daemon: RsyncDaemon = await startRsyncDaemon({
    host: config.host,
    port: config.rsyncPort,
    dataDir: config.dataDir,
    rsyncBin: config.rsyncBin,
    onUnexpectedExit: (reason) => logger.warn(reason),
  });
  cleanups.push(() => daemon.stop());

  // A write's temp file last modified before this agent started is one a killed agent left (a
  // write in progress here keeps its mtime after this start): the store walks remove it.
  const startedAt = Date.now();
  const staleTempFiles = {
    before: startedAt,
    onRemoved: (path: string, size: bigint) =>
      logger.info(
        { path, size: size.toString() },
        `removed ${JSON.stringify(path)}, the temp file of a write a stopped process left`,
      ),
  };
  // Every reconcile walks the whole store again: one warning a minute, with how many were held back.
  const nameWarnings = new WarningThrottle(NAME_WARNING_INTERVAL_MS);
  const generator = new ChangelogGenerator({
    root: fileStore,
    partitionCount: config.partitions,
    staleTempFiles,
    onNameNotUtf8: (under, name) => {
      const { due, heldBack } = nameWarnings.take('name-not-utf8');
      if (!due) return;
      const shown = `$'${escapeNameBytes(Buffer.concat([Buffer.from(`${join(fileStore, under)}/`), name]))}'`;
      logger.warn(
        `${shown}: the name is not UTF-8, so no store path can name it and the file (or directory) is neither logged nor replicated: rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest ${shown})${heldBack > 0 ? ` (and ${heldBack} more since the last warning, counting each walk)` : ''}`,
      );
    },
  });
  const incarnation = `${config.nodeId}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const acks = new ReplicaAcks();
  generator.onAppend((partition, record) => acks.noteAppended(partition, record.txid, performance.now()));
  const polls = new Set<AbortController>();
  let stopping = false;
  let coordinator: Coordinator | undefined;
  let placementOf: PartitionPlacement | undefined;
  /** The other live nodes placed on `partition`. */
  const replicasOf = (partition: number) => placementOf?.replicasOf(partition) ?? [];
  /** Of those, the ones whose acks `one` and `all` count (see ackingReplicas). */
  const ackingReplicasOf = (partition: number) =>
    ackingReplicas(replicasOf(partition), acks.of(partition), (id) =>
      coordinator === undefined ? undefined : reportedByCurrentProcess(coordinator.view, partition, id),
    );
  const controllers: PartitionController[] = [];

  const metrics = createMetrics({
    controllers: () => controllers,
    generation: (p) => coordinator?.view.partitions.get(p)?.generation ?? 0n,
    acks,
    replicasOf,
    reconcilesCompleted: () => generator.reconcilesCompleted,
  });
  const state: AgentState = {
    config,
    metrics,
    logs,
    controllers,
    generator,
    masterOf(partition) {
      const master = coordinator?.view.partitions.get(partition)?.master;
      const node = master === undefined ? undefined : coordinator?.view.nodes.get(master.nodeId);
      if (master === undefined || node === undefined || master.state !== 'serving') return undefined;
      return { nodeId: master.nodeId, host: node.host, httpPort: node.httpPort };
    },
    lostAt(partition, txid) {
      const pv = coordinator?.view.partitions.get(partition);
      if (pv === undefined || agreedByHistory({ txid }, pv.history, pv.generation)) return undefined;
      return pv.history.get(generationOf(txid));
    },
    noteReplicaAck(partition, replica, after) {
      acks.note(partition, replica, after);
    },
    waitForAcks(partition, txid, mode, timeoutMs) {
      return acks.wait(partition, txid, mode, () => ackingReplicasOf(partition), timeoutMs);
    },
    trackPoll(controller) {
      if (stopping) return undefined;
      polls.add(controller);
      return () => polls.delete(controller);
    },
    status() {
      return {
        nodeId: config.nodeId,
        session: coordinator?.sessionValid() ?? false,
        partitions: controllers.map((c) => {
          const pv = coordinator?.view.partitions.get(c.partition);
          return {
            partition: c.partition,
            role: c.role,
            holds: c.holds,
            placedOn: placementOf?.placedOn(c.partition) ?? [],
            generation: (pv?.generation ?? c.generation).toString(),
            lastTxid: logs[c.partition]!.lastTxid.toString(),
            lastTxidText: formatTxId(logs[c.partition]!.lastTxid),
            master: pv?.master?.nodeId ?? null,
            // False while a new master drains, before it takes writes.
            masterServing: pv?.master?.state === 'serving',
            following: c.followingNode ?? null,
            // A new replica's bulk copy of the master's store, while it runs.
            bootstrap: c.bootstrapProgress(performance.now()) ?? null,
            replicaAcks: Object.fromEntries([...acks.of(c.partition)].map(([k, v]) => [k, v.toString()])),
            // On a master: how long each live replica's oldest unacknowledged record has waited.
            replicaLagMs:
              c.role === 'master'
                ? Object.fromEntries(
                    replicasOf(c.partition).map((id) => [
                      id,
                      acks.lagMs(c.partition, id, performance.now()) ?? null,
                    ]),
                  )
                : {},
            // What every live node last reported to etcd as applied (the promotion ranking's input).
            reported: Object.fromEntries(
              [...(pv?.replicas ?? new Map<string, bigint>())]
                .filter(([id]) => coordinator?.view.nodes.has(id))
                .map(([id, txid]) => [id, txid.toString()]),
            ),
          };
        }),
        nodes: [...(coordinator?.view.nodes.values() ?? [])].map((n) => ({
          id: n.id,
          url: `http://${n.host}:${n.httpPort}`,
          rsyncPort: n.rsyncPort,
        })),
      };
    },
  };

  const app = await buildHttpServer(state, logger);
  try {
    await app.listen({ host: config.host, port: config.httpPort });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new AgentStartError(
        'HTTP_PORT_IN_USE',
        `HTTP port ${config.httpPort} on ${config.host} is in use: stop what holds it or pick another --http-port`,
      );
    }
    throw error;
  }
  cleanups.push(async () => {
    stopping = true;
    for (const poll of polls) poll.abort();
    await app.close();
  });

  const identity = await readClusterIdentity(config);
  coordinator = await Coordinator.connect({
    endpoints: config.etcd,
    cluster: config.cluster,
    ttlSeconds: config.leaseTtlSeconds,
    settings: { partitions: config.partitions, replicationFactor: config.replicationFactor },
    clusterId: identity?.id,
    node: {
      id: config.nodeId,
      host: config.host,
      httpPort: config.httpPort,
      rsyncPort: config.rsyncPort,
      pid: process.pid,
      startedAt: new Date().toISOString(),
    },
  }).catch((error: unknown) => {
    if (!(error instanceof CoordinatorError && error.code === 'CLUSTER_MISMATCH')) throw error;
    throw new AgentStartError(
      'DATA_DIR_OF_ANOTHER_CLUSTER',
      `data dir ${config.dataDir} was made in cluster ${JSON.stringify(identity?.cluster)}: ${error.message}; start it with the --etcd and --cluster it was made in, or, if etcd was replaced and this data is to join the new one, remove ${clusterIdentityFile(config)} first`,
    );
  });
  const coord = coordinator;
  cleanups.push(() => coord.close());
  // Remembered at the first start in a cluster (see readClusterIdentity).
  if (identity === undefined) {
    await writeFileAtomic(
      clusterIdentityFile(config),
      `${JSON.stringify({ cluster: config.cluster, id: coord.clusterId })}\n`,
    );
  }

  let watcher: StoreWatcher | undefined;
  const watcherWarnings = new WarningThrottle(WATCHER_WARNING_INTERVAL_MS);
  let reconcileTimer: NodeJS.Timeout | undefined;
  // A log that can no longer be appended to may first fail a record of the watcher or reconcile:
  // its master steps down then too.
  const checkLogs = () => {
    for (const controller of controllers) controller.checkLog();
  };
  const reconcile = () => {
    generator.reconcile().catch((error: Error) => {
      logger.warn({ err: error }, `reconcile failed: ${error.message}`);
      checkLogs();
    });
  };
  const updateWatcher = () => {
    const mastering = controllers.some((c) => c.role === 'master');
    if (mastering && watcher === undefined && reconcileTimer === undefined) {
      if (config.watch) {
        watcher = followWatcher(generator, {
          settleMs: config.watchSettleMs,
          onError: (error) => {
            const code = (error as NodeJS.ErrnoException).code ?? 'ERROR';
            const { due, heldBack } = watcherWarnings.take(code);
            if (due) {
              logger.warn(
                { err: error, ...(heldBack > 0 ? { repeats: heldBack } : {}) },
                `watcher: ${describeWatcherError(error)}${heldBack > 0 ? ` (and ${heldBack} more like it since the last)` : ''}`,
              );
            }
            checkLogs();
          },
        });
        // No watcher replays what happened before it started: reconcile once it is ready.
        void watcher.ready.then(reconcile);
      } else {
        reconcile();
      }
      if (config.reconcileIntervalMs > 0) {
        reconcileTimer = setInterval(reconcile, config.reconcileIntervalMs);
        reconcileTimer.unref();
      }
    } else if (!mastering) {
      void watcher?.close();
      watcher = undefined;
      clearInterval(reconcileTimer);
      reconcileTimer = undefined;
    }
  };
  cleanups.push(async () => {
    clearInterval(reconcileTimer);
    await watcher?.close();
  });

  // The partitions share one store: one bulk copy into it at most, and no batch meanwhile.
  const storeGate = new StoreGate();
  const placement = new PartitionPlacement({
    nodeId: config.nodeId,
    replicationFactor: config.replicationFactor,
    coordinator: coord,
    controllers,
    logs,
    acked: (partition, id) => acks.of(partition).get(id) ?? 0n,
    storeGate,
    fileStore,
    partitionOf: (path) => generator.partitionOf(path),
    runDir: join(config.dataDir, 'run'),
    handOverTimeoutMs: HANDOVER_TIMEOUT_MS,
    graceMs: config.placementGraceMs,
    logger,
  });
  placementOf = placement;
  const storeChecks = new StoreChecks({
    root: fileStore,
    staleTempFiles,
    partitionOf: (path) => generator.partitionOf(path),
    onWalk: (partitions) => {
      metrics.storeCheckWalks.inc();
      if (partitions.length === 0) return;
      logger.info(
        { partitions },
        `store checked against the logs of partition(s) ${partitions.join(', ')} in one walk`,
      );
    },
  });
  for (let p = 0; p < config.partitions; p++) {
    controllers.push(
      new PartitionController({
        partition: p,
        nodeId: config.nodeId,
        incarnation,
        dataDir: config.dataDir,
        coordinator: coord,
        generator,
        log: logs[p]!,
        logger,
        onMastershipChange: updateWatcher,
        metrics,
        revokeRefusingMaster: config.revokeRefusingMaster,
        storeChecks,
        storeGate,
        members: () => placement.membersOf(p),
        ownsPath: (path) => generator.partitionOf(path) === p,
        onStoreCopy: (phase) => placement.noteStoreCopy(phase),
      }),
    );
  }
  // Runs after the controllers close (cleanups run last first), which ends what a pass awaits.
  cleanups.push(() => placement.close());
  cleanups.push(async () => {
    await Promise.all(controllers.map((c) => c.close()));
    await storeChecks.close();
  });
  coord.on('change', () => {
    placement.schedule();
    for (const controller of controllers) controller.schedule();
    // A replica that left (or let the partition go) may be all a waiting write still lacked.
    acks.recheck();
  });
  coord.on('session-lost', (reason: string) => {
    logger.warn({ reason }, `etcd session lost (${reason}): fencing every partition this node masters`);
    for (const controller of controllers) controller.fence(`session lost: ${reason}`);
  });
  const outageWarnings = new WarningThrottle(OUTAGE_WARNING_INTERVAL_MS);
  coord.on('session-retry-failed', (error: Error, downMs: number) => {
    if (!outageWarnings.take('outage').due) return;
    logger.warn(
      { err: error, downMs },
      `no etcd session for ${Math.round(downMs / 1000)} s (${error.message}): this node takes no writes and stands in no election until etcd answers`,
    );
  });
  coord.on('session', () => {
    // The next outage is told from its first failed retry.
    outageWarnings.forget('outage');
    logger.info('etcd session re-established');
    placement.schedule();
    for (const controller of controllers) controller.schedule();
  });
  placement.schedule();

  let closing: Promise<void> | undefined;
  return {
    config,
    state,
    url: `http://${config.host}:${config.httpPort}`,
    close() {
      closing ??= (async () => {
        placement.halt();
        const outcomes = await Promise.all(
          controllers.map((c) =>
            c.handOver((last) => {
              const live = replicasOf(c.partition);
              return live.length === 0 || ackSatisfied(acks.of(c.partition), last, 'all', live);
            }, HANDOVER_TIMEOUT_MS),
          ),
        );
        // Replicas that had not caught up: the successor drains what they lack from this node's
        // daemon and feed, which the cleanups below stop. Acknowledged writes are only here.
        const toDrain = controllers.filter((_, i) => outcomes[i] === 'drain').map((c) => c.partition);
        if (toDrain.length > 0 && !(await successorsServing(coord, toDrain, config.nodeId))) {
          logger.warn(
            { partitions: toDrain },
            `shutdown: no successor served partitions ${toDrain.join(', ')} within ${SUCCESSOR_WAIT_MS} ms of the handover; stopping anyway (this node's records past its replicas are drained when it returns)`,
          );
        }
        for (const cleanup of cleanups.reverse()) {
          const started = performance.now();
          await cleanup().catch((error: Error) => logger.warn({ err: error }, `shutdown: ${error.message}`));
          logger.debug(`shutdown step done in ${Math.round(performance.now() - started)} ms`);
        }
      })();
      return closing;
    },
  };
}

/**
 * Which cluster a data dir belongs to (`<dataDir>/cluster.json`, `{ cluster, id }`): written at
 * the first start in a cluster, given to the coordinator at every start after. Without it, a
 * data dir started against another cluster (a copied config, a wrong --etcd or --cluster), or
 * against an etcd that lost its keys, joins with a log of records that cluster never had: its
 * generations may pass the cluster's, it then ranks first in a vote, and replicas apply its
 * records after their own.
 */
async function readClusterIdentity(config: NodeConfig): Promise<{ cluster: string; id: string } | undefined> {
  const file = clusterIdentityFile(config);
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (text === undefined) return undefined;
  let recorded: { cluster?: unknown; id?: unknown } = {};
  try {
    recorded = JSON.parse(text);
  } catch {}
  if (typeof recorded.id !== 'string' || typeof recorded.cluster !== 'string') {
    throw new AgentStartError(
      'DATA_DIR_OF_ANOTHER_CLUSTER',
      `${file} does not say which cluster this data dir belongs to (${JSON.stringify(text.slice(0, 100))}): remove it to take the data into the cluster at --etcd, or put back the {"cluster", "id"} it had`,
    );
  }
  return { cluster: recorded.cluster, id: recorded.id };
}

function clusterIdentityFile(config: NodeConfig): string {
  return join(config.dataDir, 'cluster.json');
}

/** A watcher error as an operator can act on it. */
export function describeWatcherError(error: Error): string {
  // inotify's limit, reported as ENOSPC ("System limit for number of file watchers reached"): not
  // a full disk.
  if ((error as NodeJS.ErrnoException).code === 'ENOSPC') {
    return `${error.message}: the kernel's limit of inotify watches is reached, not the disk; raise it (sysctl fs.inotify.max_user_watches=524288); meanwhile files dropped in by hand under the directories not watched are logged by the periodic reconcile (every minute by default: reconcileIntervalMs)`;
  }
  return error.message;
}
