import { existsSync } from 'node:fs';
import { lstat, mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { ChangelogGenerator } from '@pfs/changelog-generator';
import {
  type ClusterView,
  type Coordinator,
  currentHandover,
  type MasterView,
  rankCandidates,
  reportedByCurrentProcess,
  reportedSinceMasterLeft,
} from '@pfs/coordinator-etcd';
import {
  type AppliedBatch,
  type BootstrapDone,
  type BootstrapProgress,
  createReplicator,
  httpFeedSource,
  MAX_FEED_RECORDS,
  type RecordSource,
  type Replicator,
  type ReplicatorError,
  rsyncLogSource,
  rsyncTempDirOf,
  type StoreGate,
} from '@pfs/replicator';
import { pullBatch } from '@pfs/rsync-invoker';
import { formatTxId, fsyncDir, generationOf, type LogRecord, type TxId, type TxLog } from '@pfs/txlog';
import type { Logger } from 'pino';
import { type BootstrapSummary, BootstrapTracker, describeBootstrap } from './bootstrap-progress.ts';
import { catchUpWith } from './catch-up.ts';
import {
  agreedByHistory,
  cutDivergentSuffix,
  divergencePoint,
  ForeignFileInTheWay,
  foreignFileInTheWay,
  quarantineUnlogged,
  setAsideInTheWay,
} from './divergence.ts';
import { refusesConnections } from './liveness.ts';
import type { NodeMetrics } from './metrics.ts';
import type { StoreChecks } from './store-checks.ts';
import { WarningThrottle } from './warning-throttle.ts';

/**
 * Role of this node for one partition, driven by the cluster view:
 *   OFFLINE → REPLICA (follow the serving master) → MASTER (election won, drained, generation bumped)
 *   MASTER → OFFLINE (fenced: session or mastership lost) → REPLICA of whoever is master.
 * Transitions run one at a time (a promise chain); view changes only schedule a re-evaluation.
 */
export type Role = 'offline' | 'replica' | 'electing' | 'promoting' | 'master';

export interface ControllerDeps {
  partition: number;
  nodeId: string;
  incarnation: string;
  dataDir: string;
  coordinator: Coordinator;
  generator: ChangelogGenerator;
  log: TxLog;
  logger: Logger;
  /** Called when this node starts or stops being master of the partition (watcher on/off). */
  onMastershipChange: () => void;
  metrics: NodeMetrics;
  /** Revoke the lease of a followed master whose HTTP address refuses connections (see checkMasterAlive). */
  revokeRefusingMaster: boolean;
  /** The node's store checks, shared by its partitions (see checkStore). */
  storeChecks: StoreChecks;
  /** Shared by the node's partitions, whose replicators write into one store (see StoreGate). */
  storeGate: StoreGate;
  /** The live nodes taking part in the partition: its election candidates (see partitionMembers). */
  members: () => string[];
  /** Whether a store path is in this partition (see the replicator's ownsPath). */
  ownsPath: (path: string) => boolean;
  /**
   * A bulk copy of a master's store begins or ends (however it ends): it brings the files of
   * every partition that master holds, including some this node may not (see the agent's sweep).
   */
  onStoreCopy?: (phase: 'started' | 'ended') => void;
}

/**
 * How far checkStore reads the master's later records: a difference they do not explain in
 * 100 000 records is set aside and pulled again, which loses nothing either way.
 */
const CHECK_STORE_MAX_PAGES = 10;
/** Longest wait after a master loss for every member to publish its applied txid before ranking. */
const COLLECT_MS = 50;
/** A lower-ranked candidate waits this long per rank for a better one to claim first. */
const STANDBY_PER_RANK_MS = 750;
const REPORT_EVERY_MS = 200;
/** A new replica's bulk copy is logged at its first progress update, then at most this often. */
const BOOTSTRAP_LOG_EVERY_MS = 5000;

/** How a stopping master left its partition: nothing to hand over, handed over, or to be drained. */
export type HandoverOutcome = 'none' | 'complete' | 'drain';

export class PartitionController {
  role: Role = 'offline';
  generation = 0n;
  token: bigint | undefined;
  private replicator: Replicator | undefined;
  /** A bulk copy in progress (a new replica's bootstrap), for status and the log. */
  private bootstrap: BootstrapTracker | undefined;
  private following: string | undefined;
  /** The followed master's feed and files, while a replica. */
  private followedSource: { feedUrl: string; filesSource: string } | undefined;
  private lastServingMaster:
    | {
        nodeId: string;
        host: string;
        rsyncPort: number;
        httpPort: number;
        /** Its generation: a `finalTxid` speaks only of it, not of a later master's. */
        generation: bigint;
        finalTxid?: TxId;
      }
    | undefined;
  private chain: Promise<void> = Promise.resolve();
  private scheduled = false;
  private closed = false;
  private checkingMaster = false;
  /** Evaluations failed in a row (see retryDelayMs). */
  private failures = 0;
  /**
   * Promotions failed in a row, and when this node may stand for election again: a node whose
   * promotion fails the same way each time (a damaged log, a full disk) would otherwise claim
   * first at every vote, being best-ranked, and keep the partition without a master.
   */
  private promotionFailures = 0;
  /** Per error code of the replicator: when it was last logged at warn, and how often since. */
  private readonly replicationWarnings = new WarningThrottle(REPLICATION_WARNING_INTERVAL_MS);
  private electAfter = 0;
  private electTimer: NodeJS.Timeout | undefined;
  /**
   * Whether this node may have mastered the partition since its store was last compared with its
   * log (see checkStore): `run/mastered-<p>` at start, then set by a promotion.
   */
  private mayHoldUnlogged: boolean;
  /** When a DIVERGED batch last had this node follow its master again (monotonic). */
  private lastDivergedRefollow = Number.NEGATIVE_INFINITY;
  /** The promotion under way's own abort, which a fence pulls. */
  private promotionAbort: AbortController | undefined;
  private lastReportAt = 0;
  private reportTimer: NodeJS.Timeout | undefined;
  private readonly stop = new AbortController();
  /**
   * Whether this node holds the partition: placed on it, or not yet let go (see activate and
   * release). A partition it does not hold it neither follows nor stands for, nor serves reads of.
   */
  private active = false;
  /** Applied all its master's log held, at least once since it started holding the partition. */
  private caughtUp = false;

  constructor(private readonly deps: ControllerDeps) {
    this.mayHoldUnlogged = existsSync(this.masteredMarker);
    if (this.mayHoldUnlogged) deps.storeChecks.expect(deps.partition);
  }

  /**
   * True while this node's files of the partition may include bytes no master acknowledged (a
   * former master before its checkStore): reads are refused rather than served from them.
   */
  get readsRefused(): boolean {
    return this.mayHoldUnlogged && this.role !== 'master';
  }

  /** Whether this node holds the partition (see `active`). */
  get holds(): boolean {
    return this.active;
  }

  /**
   * Whether a read of the partition is answered here: as its master, or once it has caught up
   * with one since it began to hold the partition (an election since does not change that).
   * Before that (a node that joined, or started again) its store may lack files the master has,
   * and reads go to the master.
   */
  get servesReads(): boolean {
    return this.active && (this.role === 'master' || this.caughtUp);
  }

  /** `run/mastered-<p>`: present from a promotion until the next completed checkStore. */
  private get masteredMarker(): string {
    return join(this.deps.dataDir, 'run', `mastered-${this.partition}`);
  }

  get partition(): number {
    return this.deps.partition;
  }

  /** Followed master, for status. */
  get followingNode(): string | undefined {
    return this.following?.split('@')[0];
  }

  get appliedTxid(): TxId {
    return this.deps.log.lastTxid;
  }

  /**
   * Waits, up to `timeoutMs`, until this replica has applied everything its master's log holds
   * now (asked of the master, then waited for in this node's log). True once it has; false if
   * it is not a following replica, cannot reach the master, or is still behind at the deadline.
   */
  async catchUpWithMaster(timeoutMs: number): Promise<boolean> {
    const source = this.followedSource;
    if (this.role !== 'replica' || source === undefined) return false;
    return catchUpWith(httpFeedSource(source), this.deps.log, timeoutMs, this.stop.signal);
  }

  /** The bulk copy of a new replica, while it runs. */
  bootstrapProgress(now: number): BootstrapSummary | undefined {
    return this.bootstrap?.summary(now);
  }

  /** Whether this partition's replicator is bulk-copying the node's store right now. */
  get copyingStore(): boolean {
    return this.bootstrap !== undefined;
  }

  /** True only while this node may accept a write for the partition: checked on every write. */
  writable(): boolean {
    return (
      this.role === 'master' &&
      this.deps.coordinator.sessionValid() &&
      this.deps.generator.isAttached(this.partition)
    );
  }

  /** Re-evaluates the role against the latest view (coalesced; transitions never overlap). */
  schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    this.chain = this.chain.then(async () => {
      this.scheduled = false;
      if (this.closed) return;
      try {
        await this.evaluate(this.deps.coordinator.view);
        this.failures = 0;
      } catch (error) {
        this.deps.logger.warn(
          { partition: this.partition, err: error },
          `partition ${this.partition}: ${(error as Error).message}`,
        );
        // A view change schedules at once whatever this waits: the backoff only spaces out
        // attempts that keep failing the same way (each may walk the store, see checkStore).
        setTimeout(() => this.schedule(), retryDelayMs(++this.failures)).unref();
      }
    });
  }

  /**
   * After a write failed: a master whose log can no longer be appended to (a failed write could
   * not be taken back, see TxLog.appendable) steps down, so that a replica takes the partition
   * over instead of every write failing until someone restarts this node. Its promotions fail
   * the same way meanwhile, which keeps it out of the next votes. So does one whose last append
   * failed though the log took it back (a full disk, ids of the generation used up): the
   * generator refuses its writes until an append succeeds, and a new term, here or elsewhere,
   * starts from a fresh generation.
   */
  checkLog(): void {
    if (this.role !== 'master') return;
    if (!this.deps.log.appendable) {
      this.fence('its log cannot be appended to: fix the disk and restart the node');
      return;
    }
    const failure = this.deps.generator.appendFailed(this.partition);
    if (failure !== undefined) this.fence(`an append to its log failed (${failure.message})`);
  }

  /** Stops taking writes at once; the next evaluation decides what to follow. */
  fence(reason: string): void {
    if (this.role !== 'master' && this.role !== 'promoting') return;
    this.deps.logger.warn(
      { partition: this.partition, reason },
      `partition ${this.partition}: fenced (${reason}), no more writes`,
    );
    const detached = this.deps.generator.detach(this.partition);
    // Whatever runs next (follow, divergence repair) waits for writes still committing.
    this.chain = this.chain.then(() => detached);
    this.role = 'offline';
    this.token = undefined;
    // A drain under way would go on appending what a successor may drain from here meanwhile.
    this.promotionAbort?.abort();
    this.deps.onMastershipChange();
    this.schedule();
  }

  /** Starts holding the partition: follows its master, stands for its elections. Resolves whether it was not held before. */
  activate(): boolean {
    if (this.active || this.closed) return false;
    this.active = true;
    this.caughtUp = false;
    this.schedule();
    return true;
  }

  /**
   * Stops holding the partition: as its master, hands over first (like a stop does); then stops
   * following and standing for it. Its log stops where it is, and its applied-txid key stays
   * (a drain may still need what it has) until the caller withdraws it, once the nodes placed on
   * the partition have all of it; its log and files stay until the caller drops them.
   */
  async release(caughtUp: (txid: TxId) => boolean, timeoutMs: number): Promise<void> {
    if (!this.active) return;
    this.active = false;
    const run = this.chain.then(async () => {
      await this.handOverMastership(caughtUp, timeoutMs);
      clearTimeout(this.reportTimer);
      this.reportTimer = undefined;
      const replicator = this.replicator;
      this.replicator = undefined;
      await replicator?.stop();
      this.following = undefined;
      this.followedSource = undefined;
      this.role = 'offline';
      // What it now has, for the ranking and for the caller's check of the placed nodes.
      await this.deps.coordinator.reportApplied(this.partition, this.appliedTxid).catch(() => {});
    });
    this.chain = run.catch(() => {});
    await run;
  }

  /**
   * Removes what this node keeps of a partition it no longer holds: its log and checkpoint (its
   * files are the caller's to remove, see PartitionPlacement's sweep, then forgetMastered). A divergent suffix (this
   * node, fenced as master, logged writes the cluster never agreed to) goes to quarantine/ first,
   * as when following. Resolves false, doing nothing, if the partition is held again meanwhile.
   */
  async dropLog(): Promise<boolean> {
    const run = this.chain.then(async () => {
      if (this.active || this.closed) return false;
      const { dataDir, log } = this.deps;
      const pv = this.deps.coordinator.view.partitions.get(this.partition);
      if (pv !== undefined) {
        await cutDivergentSuffix({
          log,
          history: pv.history,
          currentGeneration: pv.generation,
          fileStore: join(dataDir, 'filestore'),
          quarantineDir: join(dataDir, 'quarantine'),
          // Nothing is brought back: the partition's files are about to go.
          restore: async () => {},
        });
      }
      await log.clear();
      for (const name of [String(this.partition), `${this.partition}.unsettled`]) {
        await rm(join(dataDir, 'checkpoint', name), { force: true });
      }
      await rm(join(dataDir, 'drain', String(this.partition)), { recursive: true, force: true });
      this.lastServingMaster = undefined;
      return true;
    });
    this.chain = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /**
   * Once the sweep has removed the files of a partition let go: no bytes a former master wrote
   * without logging them are left, so its mark goes (kept until then, a partition held again
   * before the sweep is checked as a former master's).
   */
  async forgetMastered(): Promise<void> {
    const run = this.chain.then(async () => {
      if (this.active || !this.mayHoldUnlogged) return;
      await rm(this.masteredMarker, { force: true });
      this.mayHoldUnlogged = false;
    });
    this.chain = run.catch(() => {});
    await run;
  }

  private async evaluate(view: ClusterView): Promise<void> {
    const pv = view.partitions.get(this.partition);
    const master = pv?.master;
    if (this.role === 'master' || this.role === 'promoting') {
      if (master === undefined || master.token !== this.token) this.fence('mastership key changed or gone');
      return;
    }
    if (
      master !== undefined &&
      master.nodeId === this.deps.nodeId &&
      master.incarnation === this.deps.incarnation
    ) {
      // A claim of ours that we no longer act on (a promotion cut short, a fence): give it back.
      // A failure throws, so that it is tried again after a pause (see schedule): the key sits
      // on a live lease, the others wait for it, and no later change of the view may come.
      await this.deps.coordinator.resignMaster(this.partition, master.token);
      return;
    }
    if (master !== undefined) {
      const node = view.nodes.get(master.nodeId);
      if (master.state === 'serving' && node !== undefined) {
        // Kept while the partition is not held too: a node that holds it again after a master
        // handed over must know what that master had (handedOverBy checks its generation).
        this.lastServingMaster = {
          nodeId: master.nodeId,
          host: node.host,
          rsyncPort: node.rsyncPort,
          httpPort: node.httpPort,
          generation: BigInt(master.generation),
          ...(master.finalTxid === undefined ? {} : { finalTxid: BigInt(master.finalTxid) }),
        };
        if (this.active && master.nodeId !== this.deps.nodeId)
          await this.follow(master, node.host, node.httpPort, node.rsyncPort);
      }
      return;
    }
    if (!this.active) return;
    if (!this.deps.coordinator.sessionValid()) return;
    const wait = this.electAfter - performance.now();
    if (wait > 0) {
      this.role = 'offline';
      this.electTimer ??= setTimeout(() => {
        this.electTimer = undefined;
        this.schedule();
      }, wait).unref();
      return;
    }
    await this.elect();
  }

  private async follow(master: MasterView, host: string, httpPort: number, rsyncPort: number): Promise<void> {
    const key = `${master.nodeId}@${master.token}`;
    if (this.following === key && this.role === 'replica') return;
    const source = {
      feedUrl: `http://${host}:${httpPort}/v1/partitions/${this.partition}/records`,
      filesSource: `rsync://${host}:${rsyncPort}/filestore/`,
    };
    const replicator = await this.ensureReplicator(source);
    await replicator.pause();
    await this.repairDivergence(source.filesSource, replicator);
    if (this.mayHoldUnlogged) {
      await this.checkStore(source);
      // Differences were explained by this master's records: if another took over meanwhile,
      // the check is done again against it (the view change has scheduled that follow).
      const now = this.deps.coordinator.view.partitions.get(this.partition)?.master;
      if (now?.nodeId !== master.nodeId || now.token !== master.token) return;
      await rm(this.masteredMarker, { force: true });
      await fsyncDir(dirname(this.masteredMarker));
      this.mayHoldUnlogged = false;
    }
    replicator.switchSource(source);
    replicator.start();
    // Following a master again: failed promotions of an earlier failover no longer count.
    this.promotionFailures = 0;
    this.following = key;
    this.followedSource = source;
    this.role = 'replica';
    this.deps.logger.info(
      { partition: this.partition, master: master.nodeId, from: formatTxId(this.appliedTxid) },
      `partition ${this.partition}: replica of ${master.nodeId} from ${formatTxId(this.appliedTxid)}`,
    );
  }

  /**
   * On a node that has mastered the partition, before it follows another master: sets aside the
   * bytes its store holds that its log does not record, and brings those paths back from the
   * master. A master killed (or whose log append failed) between renaming a put into place and
   * logging it leaves such a file; the write was never acknowledged, and the node, now a
   * replica, would otherwise serve it until the path is written again. A difference the
   * master's later records account for (the node drained or replicated past its log after it
   * stopped being master) is left for the replicator to verify and log.
   */
  private async checkStore(source: { feedUrl: string; filesSource: string }): Promise<void> {
    const fileStore = join(this.deps.dataDir, 'filestore');
    const log = this.deps.log;
    // The master first: unreachable, this fails before the walk rather than after it.
    const later = await this.recordsAfter(source, log.lastTxid);
    const changes = await this.deps.storeChecks.check(this.partition, log, this.stop.signal);
    if (changes.length === 0) return;
    const unexplained = changes.filter((change) => {
      const record = later.get(change.path);
      if (record === undefined) return true;
      if (change.onDisk === undefined) return record.kind !== 'delete';
      return !(
        record.kind === 'put' &&
        record.size === change.onDisk.size &&
        record.sha256 === change.onDisk.sha256
      );
    });
    if (unexplained.length === 0) return;
    // Nothing is moved or pulled while another partition's file is in the way of one of them:
    // the check is made again (the mark stays), once that partition has removed it.
    for (const change of unexplained) {
      const foreign = await foreignFileInTheWay(fileStore, change.path, this.deps.ownsPath);
      if (foreign !== undefined) throw new ForeignFileInTheWay(change.path, foreign);
    }
    for (const change of unexplained) {
      if (change.onDisk === undefined) {
        // A directory where the log had a file, holding only this partition's files (unlogged
        // ones): rsync's --force would delete it to bring the file back, so it goes aside, whole.
        const entry = await lstat(join(fileStore, change.path)).catch(() => undefined);
        if (entry?.isDirectory()) {
          await setAsideInTheWay({
            fileStore,
            quarantineDir: join(this.deps.dataDir, 'quarantine'),
            path: change.path,
            txid: log.lastTxid,
            kind: 'directory',
          });
        }
        continue;
      }
      await quarantineUnlogged({
        fileStore,
        quarantineDir: join(this.deps.dataDir, 'quarantine'),
        path: change.path,
        lastTxid: log.lastTxid,
        ...change.onDisk,
      });
    }
    await this.pullPaused(
      source.filesSource,
      unexplained.map((c) => c.path),
    );
    this.deps.logger.warn(
      {
        partition: this.partition,
        paths: unexplained.map((c) => c.path).slice(0, 20),
        count: unexplained.length,
      },
      `partition ${this.partition}: ${unexplained.length} path(s) in the store were not as this node's log says; their bytes are in quarantine/ and the master's are back`,
    );
  }

  /** The last record per path the master has after `after` (at most a few pages' worth). */
  private async recordsAfter(
    source: { feedUrl: string; filesSource: string },
    after: TxId,
  ): Promise<Map<string, LogRecord>> {
    const feed = httpFeedSource(source);
    const last = new Map<string, LogRecord>();
    for (let page = 0; page < CHECK_STORE_MAX_PAGES; page++) {
      const fetched = await feed.fetch(after, {
        waitMs: 0,
        maxRecords: MAX_FEED_RECORDS,
        signal: this.stop.signal,
      });
      for (const record of fetched.records) last.set(record.path, record);
      if (fetched.records.length < MAX_FEED_RECORDS) break;
      after = fetched.records.at(-1)!.txid;
    }
    return last;
  }

  /** Cuts and quarantines what this node logged that the cluster never agreed to (docs/protocol.md). */
  private async repairDivergence(filesSource: string, replicator: Replicator): Promise<void> {
    const pv = this.deps.coordinator.view.partitions.get(this.partition);
    if (pv === undefined) return;
    const fileStore = join(this.deps.dataDir, 'filestore');
    const removed = await cutDivergentSuffix({
      log: this.deps.log,
      history: pv.history,
      currentGeneration: pv.generation,
      fileStore,
      quarantineDir: join(this.deps.dataDir, 'quarantine'),
      restore: async (paths) => {
        if (paths.length > 0) await this.pullPaused(filesSource, paths);
      },
      owns: this.deps.ownsPath,
    });
    if (removed.length === 0) return;
    await replicator.rewind();
    this.deps.logger.warn(
      { partition: this.partition, records: removed.length, from: formatTxId(removed[0]!.txid) },
      `partition ${this.partition}: cut ${removed.length} divergent record(s) from ${formatTxId(removed[0]!.txid)}; their files are in quarantine/`,
    );
  }

  /**
   * Pulls `paths` from the master into the store while the partition's replicator is paused
   * (store check, divergence repair), with its rsync temp dir: a SIGKILLed rsync's temp file
   * stays out of the store.
   */
  private async pullPaused(filesSource: string, paths: readonly string[]): Promise<void> {
    const fileStore = join(this.deps.dataDir, 'filestore');
    const tempDir = rsyncTempDirOf(fileStore, this.partition);
    await mkdir(tempDir, { recursive: true });
    // Part of a failover or of a return: it does not wait out a bulk copy of another partition.
    const signal = this.stop.signal;
    await this.deps.storeGate.shared(
      () => pullBatch({ source: filesSource, dest: fileStore, paths, tempDir, signal }),
      signal,
      { preempt: true },
    );
  }

  private async ensureReplicator(
    source: RecordSource | { feedUrl: string; filesSource: string },
  ): Promise<Replicator> {
    if (this.replicator !== undefined) return this.replicator;
    const replicator = await createReplicator({
      source,
      fileStoreDir: join(this.deps.dataDir, 'filestore'),
      log: this.deps.log,
      checkpointDir: join(this.deps.dataDir, 'checkpoint'),
      partition: this.partition,
      replicaId: this.deps.nodeId,
      storeGate: this.deps.storeGate,
      follow: false,
      minGeneration: () => this.deps.coordinator.view.partitions.get(this.partition)?.generation ?? 0n,
      ownsPath: this.deps.ownsPath,
      setAside: async (path, txid, kind) => {
        const quarantinedAs = await setAsideInTheWay({
          fileStore: join(this.deps.dataDir, 'filestore'),
          quarantineDir: join(this.deps.dataDir, 'quarantine'),
          path,
          txid,
          kind,
        });
        this.deps.logger.warn(
          { partition: this.partition, path, quarantinedAs },
          `partition ${this.partition}: ${JSON.stringify(path)} was a ${kind} here in the way of the master's ${kind === 'directory' ? 'file' : 'directory'}; it is now in quarantine/`,
        );
      },
    });
    replicator.on('caught-up', () => {
      this.caughtUp = true;
      this.ensureReported();
    });
    replicator.on('applied', (batch: AppliedBatch) => {
      this.deps.metrics.batches.inc({ result: 'ok' });
      this.deps.metrics.batchSeconds.observe(batch.durationMs / 1000);
      if (batch.paths > 0) this.deps.metrics.pulls.inc({ rsync: batch.rsyncStartedAhead ? 'ahead' : 'cold' });
      this.reportSoon();
    });
    replicator.on('bootstrap-started', () => {
      this.deps.onStoreCopy?.('started');
      this.bootstrap = new BootstrapTracker(performance.now(), BOOTSTRAP_LOG_EVERY_MS);
      this.deps.logger.info(
        { partition: this.partition },
        `partition ${this.partition}: this store is empty: starting a bulk copy of the master's store`,
      );
    });
    // 'bootstrap-started' always comes first and sets the tracker.
    replicator.on('bootstrap-progress', (progress: BootstrapProgress) => {
      const tracker = this.bootstrap;
      if (tracker === undefined) return;
      tracker.note(progress);
      const now = performance.now();
      if (!tracker.logDue(now)) return;
      const summary = tracker.summary(now);
      this.deps.logger.info(
        { partition: this.partition, bootstrap: summary },
        `partition ${this.partition}: copying the master's store: ${describeBootstrap(summary)}`,
      );
    });
    replicator.on('bootstrapped', (done: BootstrapDone) => {
      const summary = this.bootstrap?.summary(performance.now());
      this.bootstrap = undefined;
      this.deps.onStoreCopy?.('ended');
      this.deps.logger.info(
        {
          partition: this.partition,
          bootstrapMs: Math.round(done.durationMs),
          hashTailMs: Math.round(done.hashTailMs),
          syncMs: Math.round(done.syncMs),
          hashed: done.hashed,
          copies: done.results.length,
          files: summary?.files ?? 0,
          bytes: summary?.bytes ?? 0,
        },
        `partition ${this.partition}: copied the master's store in ${Math.round(done.durationMs)} ms with ${done.results.length} rsync(s) (${done.hashed} files hashed on arrival)`,
      );
    });
    replicator.on('bootstrap-abandoned', (error: Error) => {
      const summary = this.bootstrap?.summary(performance.now());
      this.bootstrap = undefined;
      this.deps.onStoreCopy?.('ended');
      // Aborted: this node paused the partition (a master change, a stop); not worth a warning.
      const aborted = (error as { code?: string }).code === 'RSYNC_ABORTED';
      this.deps.logger[aborted ? 'info' : 'warn'](
        { partition: this.partition, err: error, bootstrap: summary },
        `partition ${this.partition}: the bulk copy of the master's store ${aborted ? 'was stopped' : `failed (${error.message})`}; it is made again while the store is empty, else the log replay transfers every file`,
      );
    });
    replicator.on('error', (error: Error) => {
      this.deps.metrics.batches.inc({ result: 'error' });
      // A replica stuck retrying (a full disk, a file it cannot verify) must show in the log,
      // but a batch retried every few hundred ms must not flood it: each kind of error is
      // logged at warn at most every 10 s, with how many of it went unlogged meanwhile.
      const code = (error as { code?: string }).code ?? 'ERROR';
      this.deps.metrics.replicationErrors.inc({ code });
      const now = performance.now();
      const { due, heldBack: repeats } = this.replicationWarnings.take(code);
      if (due) {
        this.deps.logger.warn(
          { partition: this.partition, err: error, ...(repeats > 0 ? { repeats } : {}) },
          `partition ${this.partition}: ${error.message}${repeats > 0 ? ` (and ${repeats} more like it since the last)` : ''}`,
        );
      } else {
        this.deps.logger.debug(
          { partition: this.partition, err: error },
          `partition ${this.partition}: ${error.message}`,
        );
      }
      if ((error as ReplicatorError).code === 'SOURCE_UNAVAILABLE') this.checkMasterAlive();
      // This log holds records the master's does not: following it again repairs the log first
      // (see repairDivergence), with the cluster's history as the view now has it.
      // At most every few seconds: a repair that finds nothing to cut (the view does not show the
      // generation's end yet) leaves the replicator's own backoff to pace the retries.
      if (
        (error as ReplicatorError).code === 'DIVERGED' &&
        this.role === 'replica' &&
        now - this.lastDivergedRefollow >= DIVERGED_REFOLLOW_MS
      ) {
        this.lastDivergedRefollow = now;
        this.following = undefined;
        this.schedule();
      }
    });
    this.replicator = replicator;
    return replicator;
  }

  /**
   * The followed master's feed failed: if its HTTP port now refuses connections, its process is
   * gone, and its lease is revoked rather than left to run out (up to a TTL later), so that the
   * election starts at once. A master that is merely unreachable keeps its lease until it
   * expires. One check at a time.
   */
  private checkMasterAlive(): void {
    if (!this.deps.revokeRefusingMaster || this.checkingMaster || this.role !== 'replica' || this.closed)
      return;
    const view = this.deps.coordinator.view;
    const master = view.partitions.get(this.partition)?.master;
    const node = master === undefined ? undefined : view.nodes.get(master.nodeId);
    if (master === undefined || node === undefined || this.following !== `${master.nodeId}@${master.token}`)
      return;
    this.checkingMaster = true;
    void (async () => {
      try {
        if (!(await refusesConnections(node.host, node.httpPort))) return;
        if (await this.deps.coordinator.revokeMasterLease(this.partition, master.token)) {
          this.deps.logger.warn(
            { partition: this.partition, master: master.nodeId },
            `partition ${this.partition}: ${master.nodeId} refuses connections on ${node.host}:${node.httpPort} (its process is gone): revoked its etcd lease instead of waiting for it to expire`,
          );
        }
      } catch (error) {
        this.deps.logger.debug(
          { partition: this.partition, err: error },
          `partition ${this.partition}: checking whether ${master.nodeId} is alive failed: ${(error as Error).message}`,
        );
      } finally {
        this.checkingMaster = false;
      }
    })();
  }

  /**
   * Publishes the applied txid again if the view does not show it (a lost session or a restart
   * took the key; nothing was applied since, so no batch published it).
   */
  ensureReported(): void {
    if (!this.active) return;
    const reported = reportedByCurrentProcess(this.deps.coordinator.view, this.partition, this.deps.nodeId);
    if (reported !== this.appliedTxid && this.role !== 'master') this.reportSoon();
  }

  /** Publishes the applied txid for the promotion ranking, at most every REPORT_EVERY_MS. */
  private reportSoon(): void {
    // A partition let go must not publish its key again (see release).
    if (this.reportTimer !== undefined || !this.active) return;
    const wait = Math.max(0, this.lastReportAt + REPORT_EVERY_MS - Date.now());
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined;
      this.lastReportAt = Date.now();
      this.deps.coordinator.reportApplied(this.partition, this.appliedTxid).catch(() => {});
    }, wait);
    this.reportTimer.unref();
  }

  /** The last master, if it handed over and no generation has begun since. */
  private handedOverBy(): { nodeId: string; finalTxid: TxId } | undefined {
    const old = this.lastServingMaster;
    const generation = this.deps.coordinator.view.partitions.get(this.partition)?.generation;
    if (old?.finalTxid === undefined || old.generation !== generation) return undefined;
    return { nodeId: old.nodeId, finalTxid: old.finalTxid };
  }

  private async elect(): Promise<void> {
    const { coordinator, nodeId } = this.deps;
    this.role = 'electing';
    this.following = undefined;
    this.followedSource = undefined;
    await this.replicator?.pause();
    const badGeneration = coordinator.generationProblem(this.partition);
    if (badGeneration !== undefined) {
      // A claim would drain without knowing where generations ended, and its bump fail.
      this.deps.logger.error({ partition: this.partition }, `partition ${this.partition}: ${badGeneration}`);
      this.role = 'offline';
      return;
    }
    const pv = coordinator.view.partitions.get(this.partition);
    if (pv !== undefined && divergencePoint(this.appliedTxid, pv.history, pv.generation) !== undefined) {
      // Our log runs past what the cluster agreed for its generation: we must not lead with it.
      // Wait for a master to follow (which repairs the log) instead.
      this.deps.logger.warn(
        { partition: this.partition },
        `partition ${this.partition}: log at ${formatTxId(this.appliedTxid)} diverges from the cluster; not standing for election`,
      );
      this.role = 'offline';
      return;
    }
    const behind = behindTheCluster(
      this.appliedTxid,
      pv?.generation ?? 0n,
      pv?.history,
      currentHandover(coordinator.view, this.partition) ?? this.handedOverBy()?.finalTxid,
    );
    if (behind !== undefined) {
      // Whoever follows this node would lose what it lacks, acknowledged writes among them (and
      // a node holding them that comes back would have them set aside as divergent). It waits
      // for a node that has them instead (docs/architecture.md, Election).
      this.deps.logger.warn(
        { partition: this.partition },
        `partition ${this.partition}: this node has ${formatTxId(this.appliedTxid)}, ${behind}; not standing for election until a node that has them is back`,
      );
      this.role = 'offline';
      return;
    }
    await coordinator.reportApplied(this.partition, this.appliedTxid).catch(() => {});
    // A master that handed over waited for its replicas to acknowledge its last txid: if every
    // member reported as much, they are equally caught up, and the first wins at once (members
    // come placed nodes first, each group by id: not one about to let the partition go too).
    // Otherwise give every member a moment to publish how far it got, then rank by that.
    const old = this.handedOverBy();
    // The master that handed over does not stand (it stops, or lets the partition go).
    const members = this.deps.members().filter((id) => id !== old?.nodeId);
    // By what each member's current process reported (see rankCandidates).
    const allHave = () =>
      old !== undefined &&
      members.every(
        (id) =>
          (id === nodeId
            ? this.appliedTxid
            : (reportedByCurrentProcess(coordinator.view, this.partition, id) ?? 0n)) >= old.finalTxid,
      );
    let handedOver = allHave();
    if (!handedOver) {
      // Every member publishes its applied txid as it starts to vote: once the view shows all of
      // them (written since the master left), ranking need wait no longer.
      await viewChangeUntil(
        coordinator,
        () => allHave() || reportedSinceMasterLeft(coordinator.view, this.partition, members),
        COLLECT_MS,
      );
      handedOver = allHave();
    }
    const ranking = handedOver ? members : rankCandidates(coordinator.view, this.partition, members);
    const rank = ranking.indexOf(nodeId);
    if (rank !== 0) {
      // Give better candidates their turn; claim anyway if none of them does.
      const deadline = Date.now() + Math.max(rank, 1) * STANDBY_PER_RANK_MS;
      while (Date.now() < deadline && coordinator.view.partitions.get(this.partition)?.master === undefined) {
        await sleep(25);
      }
      if (coordinator.view.partitions.get(this.partition)?.master !== undefined) {
        this.role = 'offline';
        return;
      }
    }
    // Stopping since the vote began: claiming now would bump the generation for nothing, or
    // worse, with a drain its aborted signal cuts short.
    if (this.closed) {
      this.role = 'offline';
      return;
    }
    const generation = coordinator.view.partitions.get(this.partition)?.generation ?? 0n;
    // A claim answered after the session it was made in was lost (and a new one opened) sits on
    // the old lease: it is given back rather than promoted on the new session.
    const session = coordinator.session;
    const token = await coordinator.claimMaster(this.partition, {
      nodeId,
      incarnation: this.deps.incarnation,
      state: 'draining',
      generation: generation.toString(),
    });
    if (token === undefined) {
      this.role = 'offline';
      return;
    }
    if (coordinator.session !== session) {
      await coordinator.resignMaster(this.partition, token).catch(() => {});
      this.role = 'offline';
      this.schedule();
      return;
    }
    this.token = token;
    this.role = 'promoting';
    try {
      await this.promote(token);
      this.promotionFailures = 0;
    } catch (error) {
      // Only a failure of this node's own (its disk, its log, a peer it could not drain) keeps
      // it out of the next votes; losing the lease or being stopped says nothing about it.
      const own =
        !(error instanceof PromotionInterrupted) &&
        !LOST_CLAIM_CODES.has((error as { code?: string }).code ?? '') &&
        this.token === token &&
        coordinator.sessionValid();
      const delay = own ? promotionRetryDelayMs(++this.promotionFailures) : 0;
      this.electAfter = performance.now() + delay;
      this.deps.logger.warn(
        { partition: this.partition, err: error, retryMs: delay },
        `partition ${this.partition}: promotion failed: ${(error as Error).message}${own ? `; not standing for election for ${delay} ms` : ''}`,
      );
      await this.deps.generator.detach(this.partition);
      // Should the resign fail, the claim is given back when the wait above ends (evaluate).
      await coordinator.resignMaster(this.partition, token).catch(() => {});
      if (this.token === token) {
        this.token = undefined;
        this.role = 'offline';
      }
      this.deps.onMastershipChange();
      this.schedule();
    }
  }

  /**
   * Where to drain from: the old master's daemon first, then each live peer that reported more
   * than this node has, best first, with what it reported.
   */
  private drainSources(): { source: RecordSource; reported?: TxId }[] {
    const sources: { source: RecordSource; reported?: TxId }[] = [];
    const old = this.lastServingMaster;
    if (old !== undefined && old.nodeId !== this.deps.nodeId) {
      sources.push({
        source: rsyncLogSource({
          logSource: `rsync://${old.host}:${old.rsyncPort}/changelog/${this.partition}/`,
          filesSource: `rsync://${old.host}:${old.rsyncPort}/filestore/`,
          mirrorDir: join(this.deps.dataDir, 'drain', String(this.partition)),
        }),
      });
    }
    const view = this.deps.coordinator.view;
    for (const peer of rankCandidates(view, this.partition)) {
      const node = view.nodes.get(peer);
      // Not a report its previous process left: that disk may be gone.
      const reported = reportedByCurrentProcess(view, this.partition, peer) ?? 0n;
      if (peer === this.deps.nodeId || node === undefined) continue;
      if (reported <= this.appliedTxid) continue;
      sources.push({
        source: httpFeedSource({
          feedUrl: `http://${node.host}:${node.httpPort}/v1/partitions/${this.partition}/records`,
          filesSource: `rsync://${node.host}:${node.rsyncPort}/filestore/`,
        }),
        reported,
      });
    }
    return sources;
  }

  private async promote(token: bigint): Promise<void> {
    const { coordinator, log, logger } = this.deps;
    const started = performance.now();
    // Aborted by a stop, or by a fence (see fence).
    this.promotionAbort = new AbortController();
    const signal = AbortSignal.any([this.stop.signal, this.promotionAbort.signal]);
    // Fencing may strike at any await below; never act on a mastership we no longer hold.
    const session = coordinator.session;
    let bumped = false;
    const stillMine = () => {
      if (this.token !== token || !coordinator.sessionValid() || coordinator.session !== session)
        throw new PromotionInterrupted('mastership lost during promotion');
      // The drains' signal: aborted, they end at once, and a bump would skip what they lacked.
      // Once bumped, a stop lets the promotion finish and hands over after it: given back
      // instead, the generation would end at records only this node has (it drained them), and
      // no other node could stand until it came back.
      if (!bumped && this.stop.signal.aborted) throw new PromotionInterrupted('the node is stopping');
    };
    // Durable before the drain, which may keep bytes that match no record, and before the first
    // put can rename a file into place: from here until a checkStore, this node's store may hold
    // bytes its log does not record.
    this.mayHoldUnlogged = true;
    await writeFile(this.masteredMarker, `${token}\n`, { flush: true });
    await fsyncDir(dirname(this.masteredMarker));
    const finalTxid = this.handedOverBy()?.finalTxid;
    const sources = finalTxid !== undefined && this.appliedTxid >= finalTxid ? [] : this.drainSources();
    let unverified: string[] = [];
    // Records past the recorded end of their generation stay where they are: the cluster never
    // agreed to them, and the old master that wrote them cuts them when it follows.
    const pv = coordinator.view.partitions.get(this.partition);
    const history = new Map(pv?.history ?? []);
    const currentGeneration = pv?.generation ?? 0n;
    const agreed = (record: LogRecord) => agreedByHistory(record, history, currentGeneration);
    if (sources.length > 0) {
      const replicator = await this.ensureReplicator(sources[0]!.source);
      const unverifiedPaths = new Set<string>();
      const drainedPeers = new Set<string>();
      // Peers that report more by the time the first sources are drained (a report throttled,
      // an old master restarted and reporting again) are drained too, before the bump.
      const morePeers = () =>
        this.drainSources().filter(
          (s) =>
            s.reported !== undefined &&
            s.reported > replicator.applied &&
            !drainedPeers.has(s.source.description),
        );
      for (let i = 0; ; i++) {
        // Once the listed sources are drained, any peer that reports more by now is drained too.
        if (i === sources.length) {
          const more = morePeers();
          if (more.length === 0 || sources.length >= MAX_DRAIN_SOURCES) break;
          sources.push(...more.slice(0, MAX_DRAIN_SOURCES - sources.length));
        }
        const { source, reported } = sources[i]!;
        // A peer that reported no more than is here now has nothing to add (the old master's
        // daemon, drained first, normally had it all).
        if (reported !== undefined && reported <= replicator.applied) continue;
        if (reported !== undefined) drainedPeers.add(source.description);
        replicator.switchSource(source);
        try {
          const drain = () =>
            replicator.drain(signal, {
              tolerateMismatch: true,
              accepts: agreed,
            });
          // The old master's daemon may be gone for a moment (its node restarting replaces
          // it): one failed read of its log must not end the drain of records only it has.
          const drained =
            reported === undefined ? await retryUnavailable(drain, stillMine, signal) : await drain();
          for (const path of drained.unverified) unverifiedPaths.add(path);
          logger.info(
            { partition: this.partition, source: source.description, unverified: drained.unverified.length },
            `partition ${this.partition}: drained to ${formatTxId(drained.applied)} from ${source.description}`,
          );
        } catch (error) {
          stillMine();
          // A live peer holding records this node lacks (acknowledged ack=one writes among
          // them) would have them cut when it follows: give the vote back, and let it (better
          // ranked) or a later attempt take over. After repeated failures, go on without it
          // rather than leave the partition without a master.
          const lacking = reported !== undefined && reported > replicator.applied;
          if (lacking && this.promotionFailures < MAX_PROMOTIONS_WAITING_FOR_A_PEER) {
            throw new Error(
              `cannot drain ${source.description}, which has up to ${formatTxId(reported)}: ${(error as Error).message}`,
            );
          }
          logger.warn(
            { partition: this.partition, err: error },
            `partition ${this.partition}: cannot drain ${source.description}: ${(error as Error).message}${lacking ? `; going on without its records past ${formatTxId(replicator.applied)}` : ''}`,
          );
        }
        stillMine();
      }
      unverified = [...unverifiedPaths];
    }
    stillMine();
    const lastTxid = log.lastTxid;
    // Of the generation whose history the drains went by: a view lagging etcd could otherwise
    // have let them take records past an end recorded since.
    const generation = await coordinator.bumpGeneration({
      partition: this.partition,
      lastTxid,
      token,
      expected: currentGeneration,
      // Past this log's own generation, which only an etcd that lost its keys (a new or restored
      // etcd, the data dirs adopted into it) can be behind: a new generation must start a new
      // range of txids here, or the log refuses it, and promotion after promotion would bump
      // etcd by one until it got there.
      atLeast: generationOf(lastTxid) + 1n,
    });
    bumped = true;
    stillMine();
    await log.startGeneration(generation);
    await this.deps.generator.attach(this.partition, log);
    stillMine();
    // Bytes the old master had on disk without a matching record: log what is really there.
    for (const path of unverified) {
      // One path it cannot log (unreadable, too long) must not undo a promotion already bumped.
      await this.deps.generator
        .observe(path)
        .catch((error: Error) =>
          logger.warn(
            { partition: this.partition, path, err: error },
            `partition ${this.partition}: cannot log what the old master left at ${JSON.stringify(path)}: ${error.message}`,
          ),
        );
    }
    this.generation = generation;
    await coordinator.updateMaster(this.partition, token, {
      nodeId: this.deps.nodeId,
      incarnation: this.deps.incarnation,
      state: 'serving',
      generation: generation.toString(),
    });
    stillMine();
    this.role = 'master';
    this.deps.metrics.promotions.inc();
    this.deps.onMastershipChange();
    // No watcher saw what was dropped into the store while this node was a replica.
    this.deps.generator
      .reconcile()
      .catch((error: Error) => logger.warn({ err: error }, `reconcile: ${error.message}`));
    logger.info(
      {
        partition: this.partition,
        generation: generation.toString(),
        previous: formatTxId(lastTxid),
        ms: Math.round(performance.now() - started),
      },
      `partition ${this.partition}: master in generation ${generation} after ${formatTxId(lastTxid)}`,
    );
  }

  /**
   * Planned handover: stop taking writes, let the followers catch up (bounded), publish the final
   * txid and resign, so the successor has nothing to drain.
   */
  async handOver(caughtUp: (txid: TxId) => boolean, timeoutMs: number): Promise<HandoverOutcome> {
    // A node on its way out must not win the election its own resignation starts.
    this.closed = true;
    // Nothing to hand over: whatever runs (a store check's walk, a follow, a promotion's drain,
    // which may wait long on a peer) is only in the way of the stop. Checks cut short keep their
    // mark and run again on the next start; a promotion cut short gives its claim back.
    if (this.role !== 'master') this.stop.abort();
    await this.chain.catch(() => {});
    return this.handOverMastership(caughtUp, timeoutMs);
  }

  /**
   * The handover itself, once nothing else runs and this node will not stand again. 'drain':
   * the replicas had not caught up in time, so the successor must drain this node, whose
   * daemon and feed have to outlive the resignation for it (see the agent's close).
   */
  private async handOverMastership(
    caughtUp: (txid: TxId) => boolean,
    timeoutMs: number,
  ): Promise<HandoverOutcome> {
    const token = this.token;
    if (this.role !== 'master' || token === undefined) return 'none';
    this.role = 'offline';
    await this.deps.generator.detach(this.partition);
    // The watcher and the periodic reconcile serve masters only (a release keeps the node up).
    this.deps.onMastershipChange();
    const last = this.deps.log.lastTxid;
    const deadline = Date.now() + timeoutMs;
    while (!caughtUp(last) && Date.now() < deadline) await sleep(10);
    // Reported before the key goes: as master it never reported, and its key still says how far
    // it had got before its term. A successor whose drain of this node's log fails would
    // otherwise see nothing here to drain through its feed, and go on without these records. Best
    // effort: the key must go anyway, or no successor can claim.
    await this.deps.coordinator.reportApplied(this.partition, last).catch((error: Error) => {
      this.deps.logger.warn(
        { err: error },
        `partition ${this.partition}: could not report ${formatTxId(last)} before giving up its mastership: ${error.message}`,
      );
    });
    let complete = false;
    try {
      // Only a complete handover lets the successor skip its drain and the ranking.
      complete = caughtUp(last);
      if (complete) {
        await this.deps.coordinator.recordHandover(this.partition, token, {
          nodeId: this.deps.nodeId,
          incarnation: this.deps.incarnation,
          state: 'serving',
          generation: this.generation.toString(),
          finalTxid: last.toString(),
        });
      }
      await this.deps.coordinator.resignMaster(this.partition, token);
    } catch (error) {
      this.deps.logger.warn(
        { err: error },
        `partition ${this.partition}: resign failed: ${(error as Error).message}`,
      );
    }
    this.token = undefined;
    return complete ? 'complete' : 'drain';
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stop.abort();
    clearTimeout(this.reportTimer);
    clearTimeout(this.electTimer);
    await this.chain.catch(() => {});
    await this.replicator?.pause();
  }
}

const REPLICATION_WARNING_INTERVAL_MS = 10_000;
/** How often a DIVERGED batch may have the node follow its master again. */
const DIVERGED_REFOLLOW_MS = 5000;
/** At most this many sources per promotion, peers found late included. */
const MAX_DRAIN_SOURCES = 16;
/** Waits between the attempts at the old master's log while its daemon refuses connections. */
const OLD_MASTER_RETRY_MS = [250, 500, 1000];

/**
 * Runs `work` again, a few times, while it fails because the source's daemon refuses connections:
 * a node restarting replaces its daemon, and is back within a second or so. A source that does
 * not answer at all (its machine down) is not waited for: each attempt would take rsync's connect
 * timeout, and the failover with it. `stillMine` is checked before each attempt.
 */
export async function retryUnavailable<T>(
  work: () => Promise<T>,
  stillMine: () => void,
  signal?: AbortSignal,
): Promise<T> {
  for (const delayMs of OLD_MASTER_RETRY_MS) {
    try {
      return await work();
    } catch (error) {
      // What rsync itself said (its stderr, kept on the cause), not the classification of its
      // exit code, whose text names "connection refused or reset" for every socket error.
      const stderr = (error as { cause?: { stderr?: unknown } }).cause?.stderr;
      const refused =
        (error as { code?: string }).code === 'SOURCE_UNAVAILABLE' &&
        typeof stderr === 'string' &&
        /Connection refused/.test(stderr);
      if (!refused) throw error;
      stillMine();
      await sleepFor(delayMs, signal);
      stillMine();
    }
  }
  return work();
}

/**
 * Why a node that has applied `applied` must not stand for a partition, or undefined if it may
 * (pure): it is behind where an ended generation ended (every master since had those records),
 * or behind the last txid the current generation's master handed over with (`handedOverAt`: its
 * placed replicas acknowledged it, and it stopped, or stopped holding the partition), or it has
 * nothing at all of a partition that has had a master (every node that ever followed one has at
 * least its generation's first record).
 */
export function behindTheCluster(
  applied: TxId,
  generation: bigint,
  history: ReadonlyMap<bigint, bigint> | undefined,
  handedOverAt?: TxId,
): string | undefined {
  let ended = 0n;
  for (const last of history?.values() ?? []) if (last > ended) ended = last;
  if (applied < ended) return `behind ${formatTxId(ended)} where an earlier generation ended`;
  if (handedOverAt !== undefined && applied < handedOverAt)
    return `behind ${formatTxId(handedOverAt)} where the last master handed over`;
  if (applied === 0n && generation > 0n) return `nothing of a partition that has had a master`;
  return undefined;
}

/** A promotion cut short by the loss of the claim or by the node stopping, not by a fault of its own. */
class PromotionInterrupted extends Error {}

/**
 * Coordinator errors that mean the claim was lost (to etcd, or to another node), or that etcd's
 * keys stop every node alike (a generation key that holds no generation, refused before a claim
 * once the view shows it): not a fault here, so no pause once it is gone.
 */
const LOST_CLAIM_CODES = new Set(['NOT_MASTER', 'GENERATION_CONFLICT', 'SESSION_LOST', 'BAD_VALUE']);

/** Promotions in a row that give the vote back when a better-informed live peer cannot be drained. */
const MAX_PROMOTIONS_WAITING_FOR_A_PEER = 3;

/** How long a node whose promotion failed stays out of elections: 2, 4, 8, 16, then 30 s. */
export function promotionRetryDelayMs(failures: number): number {
  return Math.min(30_000, 1000 * 2 ** Math.max(1, Math.min(failures, 5)));
}

/** Wait before re-evaluating after the `failures`-th failure in a row: 200 ms, doubling to 5 s. */
export function retryDelayMs(failures: number): number {
  return Math.min(5000, 200 * 2 ** Math.max(0, Math.min(failures - 1, 5)));
}

/** Resolves once `done()` holds, checked at each change of the coordinator's view, or after `ms`. */
function viewChangeUntil(coordinator: Coordinator, done: () => boolean, ms: number): Promise<void> {
  if (done()) return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (done()) finish();
    };
    const finish = () => {
      clearTimeout(timer);
      coordinator.off('change', check);
      resolve();
    };
    const timer = setTimeout(finish, ms);
    coordinator.on('change', check);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
