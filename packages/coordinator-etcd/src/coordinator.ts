import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { ConstantBackoff, noop } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, type Lease, type Watcher } from 'etcd3';
import { CoordinatorError } from './errors.ts';
import { clusterPrefix, keys, NODE_ID_PATTERN } from './keys.ts';
import {
  applyKey,
  badGenerationMessage,
  type ClusterSettings,
  ClusterSettingsSchema,
  type ClusterView,
  emptyView,
  isGeneration,
  type MasterInfo,
  type NodeInfo,
  NodeInfoSchema,
  parseJson,
} from './view.ts';

/**
 * The one file that talks to etcd (through etcd3). A Coordinator holds one session (one lease) at
 * a time, keeps a cluster view fed by a prefix watch, and performs the guarded writes of the
 * protocol (docs/protocol.md).
 *
 * Fencing never waits for etcd3's `lost` event, which comes about 2×TTL late: after every
 * keepalive reply the session is valid until `send time + TTL - margin` on the monotonic clock,
 * and `session-lost` is emitted as soon as that passes. A master must stop writing on it.
 *
 * Events: `change` (view), `session-lost` (reason), `session` (a new lease is in place).
 */
export interface CoordinatorOptions {
  endpoints: string[];
  cluster: string;
  node: NodeInfo;
  ttlSeconds: number;
  /** Deadline of each unary etcd call. */
  callTimeoutMs?: number;
  /** Safety margin taken off the lease validity, for clock-rate and scheduling slack. */
  fenceMarginMs?: number;
  /**
   * What this node assumes of the cluster. The first node to connect records it; a node whose
   * settings differ from the recorded ones is refused (SETTINGS_MISMATCH) before it registers.
   */
  settings?: Omit<ClusterSettings, 'id'>;
  /**
   * The id of the cluster this node's data belongs to (see ClusterSettings), if it has joined one
   * before. connect then refuses (CLUSTER_MISMATCH) an etcd whose `config` key has another id,
   * or none at all, rather than make a new cluster of it, before the node registers; and a new
   * session after an outage is not opened in such an etcd either (etcd replaced or wiped while
   * the node ran), so that the node takes no part until an operator has chosen.
   */
  clusterId?: string;
}

export const DEFAULT_CALL_TIMEOUT_MS = 1500;
export const DEFAULT_FENCE_MARGIN_MS = 300;
const WATCHDOG_INTERVAL_MS = 50;
const RESESSION_DELAY_MS = 250;

export class Coordinator extends EventEmitter {
  readonly cluster: string;
  readonly nodeId: string;
  view: ClusterView = emptyView();
  private readonly client: Etcd3;
  private readonly options: Required<Omit<CoordinatorOptions, 'settings' | 'clusterId'>> &
    Pick<CoordinatorOptions, 'settings'>;
  /** The cluster's id (see ClusterSettings), once connect has agreed the settings. */
  clusterId: string | undefined;
  private lease: Lease | undefined;
  private leaseId: string | undefined;
  private validUntil = 0;
  /**
   * The same deadline on the wall clock. The monotonic clock stops while the machine or VM is
   * suspended, etcd's does not: after a pause longer than the TTL the lease is gone while the
   * monotonic deadline has barely moved. A wall clock set forward fences early, which is safe.
   */
  private validUntilWall = 0;
  /** How long the next restart of a lost watch waits. */
  private watchRetryMs = WATCH_RETRY_MS;
  /** When the last session was lost (monotonic). */
  private sessionLostAt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private watcher: Watcher | undefined;
  private closed = false;
  private changeQueued = false;
  private resessionTimer: NodeJS.Timeout | undefined;

  private constructor(options: Coordinator['options']) {
    super();
    // Each partition of a node may wait on view changes at once (a vote after its master left):
    // more than Node's default of 10 listeners is the design, not a leak.
    this.setMaxListeners(0);
    this.options = options;
    this.cluster = options.cluster;
    this.nodeId = options.node.id;
    this.client = new Etcd3({
      hosts: options.endpoints,
      defaultCallOptions: (context) =>
        context.isStream ? {} : { deadline: Date.now() + options.callTimeoutMs },
      // One etcd blip must not open a 5 s circuit breaker: fail fast and let the caller retry.
      faultHandling: { host: () => noop, global: noop, watchBackoff: new ConstantBackoff(250).next() },
    });
  }

  /** Connects, registers the node on a fresh lease and loads the cluster view. */
  static async connect(options: CoordinatorOptions): Promise<Coordinator> {
    if (!NODE_ID_PATTERN.test(options.node.id)) {
      throw new CoordinatorError(
        'BAD_VALUE',
        `node id ${JSON.stringify(options.node.id)} must match ${NODE_ID_PATTERN}`,
      );
    }
    if (!Number.isInteger(options.ttlSeconds) || options.ttlSeconds < 1) {
      throw new CoordinatorError(
        'BAD_VALUE',
        `lease TTL must be a whole number of seconds ≥ 1, got ${options.ttlSeconds}`,
      );
    }
    const coordinator = new Coordinator({
      callTimeoutMs: DEFAULT_CALL_TIMEOUT_MS,
      fenceMarginMs: DEFAULT_FENCE_MARGIN_MS,
      ...options,
    });
    try {
      if (options.settings !== undefined) {
        coordinator.clusterId = await coordinator.agreeSettings(options.settings, options.clusterId);
      }
      await coordinator.startSession();
      await coordinator.startWatch();
    } catch (error) {
      await coordinator.close();
      throw unreachable(options.endpoints, error);
    }
    coordinator.watchdog = setInterval(() => coordinator.checkDeadline(), WATCHDOG_INTERVAL_MS);
    return coordinator;
  }

  /**
   * Why no node may stand for election of `partition`, when its generation key holds no
   * generation (the message names the key and the value to put back); undefined otherwise.
   */
  generationProblem(partition: number): string | undefined {
    const pv = this.view.partitions.get(partition);
    if (pv?.badGeneration === undefined) return undefined;
    return badGenerationMessage(keys.generation(this.cluster, partition), pv.badGeneration, pv);
  }

  /** True while the lease is surely alive on the etcd side (monotonic clock). */
  sessionValid(): boolean {
    return (
      this.leaseId !== undefined && performance.now() < this.validUntil && Date.now() < this.validUntilWall
    );
  }

  /** Milliseconds the session is still surely valid (0 when it is not). */
  sessionRemainingMs(): number {
    return this.leaseId === undefined
      ? 0
      : Math.max(0, Math.min(this.validUntil - performance.now(), this.validUntilWall - Date.now()));
  }

  /**
   * Records `settings` as the cluster's, with a new id, if it has none yet, else checks them
   * against the recorded ones (and gives a record without an id one). Resolves the cluster's id.
   */
  private async agreeSettings(settings: Omit<ClusterSettings, 'id'>, expectedId?: string): Promise<string> {
    const key = keys.settings(this.cluster);
    if (expectedId !== undefined) {
      // Never made anew for a node that has joined a cluster: its data belongs to that one.
      const id = await this.currentClusterId();
      if (id !== expectedId) throw this.clusterMismatch(expectedId, id);
    }
    const made = { ...settings, id: randomUUID() };
    const result = await this.client
      .if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(JSON.stringify(made)))
      .else(this.client.get(key))
      .commit();
    if (result.succeeded) return made.id;
    const kv = result.responses[0]?.response_range?.kvs[0];
    const text = kv?.value.toString() ?? '';
    let recorded: ClusterSettings | undefined;
    try {
      recorded = ClusterSettingsSchema.parse(JSON.parse(text));
    } catch {
      throw new CoordinatorError(
        'SETTINGS_MISMATCH',
        `etcd key ${key} holds ${JSON.stringify(text.slice(0, 200))}, not cluster settings: fix or delete that key, or use another --cluster`,
      );
    }
    if (
      recorded.partitions === settings.partitions &&
      recorded.replicationFactor === settings.replicationFactor
    ) {
      if (recorded.id !== undefined) return recorded.id;
      // Recorded before clusters had ids: the first node to see it gives it one, and every node
      // takes whichever id won.
      await this.client
        .if(key, 'Mod', '==', kv!.mod_revision)
        .then(this.client.put(key).value(JSON.stringify(made)))
        .commit();
      return this.agreeSettings(settings);
    }
    throw new CoordinatorError(
      'SETTINGS_MISMATCH',
      `cluster ${JSON.stringify(this.cluster)} has ${describeSettings(recorded)} (etcd key ${key}) but this node was started with ${describeSettings(settings)}: start it with --partitions ${recorded.partitions} --replication-factor ${recorded.replicationFactor}, or use another --cluster`,
    );
  }

  /** The id in the cluster's `config` key now, undefined if there is no key or no id. */
  private async currentClusterId(): Promise<string | undefined> {
    const text = await this.client.get(keys.settings(this.cluster)).string();
    return text === null ? undefined : parseJson(ClusterSettingsSchema, text)?.id;
  }

  private clusterMismatch(expected: string, found: string | undefined): CoordinatorError {
    return new CoordinatorError(
      'CLUSTER_MISMATCH',
      `this node's data belongs to the cluster with id ${expected}, and etcd's cluster ${JSON.stringify(this.cluster)} ${found === undefined ? `does not exist (no ${keys.settings(this.cluster)} key, or one without an id)` : `has id ${found}`}: the data is another cluster's, or etcd was replaced or lost its keys`,
    );
  }

  private async startSession(): Promise<void> {
    // A new session after an outage, in an etcd that is no longer the one this node joined (its
    // keys lost, another etcd at the address): not opened, see CoordinatorOptions.clusterId.
    if (this.clusterId !== undefined && this.options.settings !== undefined) {
      const id = await this.currentClusterId();
      if (id !== this.clusterId) throw this.clusterMismatch(this.clusterId, id);
    }
    const ttlMs = this.options.ttlSeconds * 1000;
    const lease = this.client.lease(this.options.ttlSeconds);
    // etcd3 sends a keepalive every TTL/3 whether or not the last one was answered: match each
    // reply with the oldest unanswered send, or a late reply would be credited with a newer send.
    let sentAt: { monotonic: number; wall: number }[] = [];
    lease.on('keepaliveEstablished', () => {
      sentAt = [];
    });
    lease.on('keepaliveFired', () => {
      sentAt.push({ monotonic: performance.now(), wall: Date.now() });
    });
    lease.on('keepaliveSucceeded', () => {
      const sent = sentAt.shift();
      if (sent !== undefined && this.lease === lease) {
        this.validUntil = Math.max(this.validUntil, sent.monotonic + ttlMs - this.options.fenceMarginMs);
        // The latest reply's, not the largest: a wall clock set back must not leave a deadline
        // later than etcd's.
        this.validUntilWall = sent.wall + ttlMs - this.options.fenceMarginMs;
      }
    });
    lease.on('lost', (error) => {
      if (this.lease === lease) this.loseSession(`lease lost: ${error.message}`);
    });
    const grantSentAt = performance.now();
    const grantSentAtWall = Date.now();
    try {
      const id = await lease.grant();
      await this.register(id);
      // Closed while it was granted (a re-session in flight): nothing may keep it alive.
      if (this.closed) throw new CoordinatorError('CLOSED', 'the coordinator was closed');
      this.lease = lease;
      this.leaseId = id;
      this.validUntil = grantSentAt + ttlMs - this.options.fenceMarginMs;
      this.validUntilWall = grantSentAtWall + ttlMs - this.options.fenceMarginMs;
    } catch (error) {
      // Never leave a half-made session keeping itself alive in the background.
      await lease.revoke().catch(() => lease.release());
      throw error;
    }
  }

  /**
   * Writes this node's record on lease `id`, unless another node holds its id: one with another
   * address (a config file copied between machines). Its own record, left by its previous
   * process on a lease not yet expired, is taken over. Unguarded, the second node would
   * overwrite the first's address and bind its record to its own lease; once it stopped, the
   * first would vanish from the view while it ran, and every other node would find no master.
   */
  private async register(id: string): Promise<void> {
    const key = keys.node(this.cluster, this.nodeId);
    const value = JSON.stringify(this.options.node);
    for (let attempt = 0; attempt < 5; attempt++) {
      const kv = (await this.client.get(key).exec()).kvs[0];
      // A value that is no node record is overwritten, as an unguarded put did.
      const holder = kv === undefined ? undefined : parseJson(NodeInfoSchema, kv.value.toString());
      if (
        holder !== undefined &&
        (holder.host !== this.options.node.host || holder.httpPort !== this.options.node.httpPort)
      ) {
        throw new CoordinatorError(
          'NODE_ID_TAKEN',
          `node id ${JSON.stringify(this.nodeId)} is registered in cluster ${JSON.stringify(this.cluster)} by ${holder.host}:${holder.httpPort} (pid ${holder.pid}, started ${holder.startedAt}): give this node another --node-id; or, if that was this node's previous process at another address, start it again once that record's lease has ended (at most ${this.options.ttlSeconds} s after it died)`,
        );
      }
      const result = await this.client
        .if(key, 'Mod', '==', kv === undefined ? 0 : kv.mod_revision)
        .then(this.client.put(key).value(value).lease(id))
        .commit();
      if (result.succeeded) return;
    }
    throw new CoordinatorError(
      'NODE_ID_TAKEN',
      `node id ${JSON.stringify(this.nodeId)} is being registered by another process at the same time: give each node its own --node-id`,
    );
  }

  private checkDeadline(): void {
    if (
      this.leaseId !== undefined &&
      (performance.now() >= this.validUntil || Date.now() >= this.validUntilWall)
    ) {
      this.loseSession('lease deadline passed without a keepalive reply');
    }
  }

  private loseSession(reason: string): void {
    const lease = this.lease;
    if (lease === undefined || this.closed) return;
    this.lease = undefined;
    this.leaseId = undefined;
    this.validUntil = 0;
    this.validUntilWall = 0;
    // Best effort and never awaited: the lease may already be gone, and etcd may be unreachable.
    lease.revoke().catch(() => lease.release());
    this.sessionLostAt = performance.now();
    this.emit('session-lost', reason);
    this.scheduleResession();
  }

  private scheduleResession(): void {
    if (this.closed || this.resessionTimer !== undefined) return;
    this.resessionTimer = setTimeout(() => {
      this.resessionTimer = undefined;
      if (this.closed) return;
      this.startSession().then(
        () => this.emit('session'),
        (error: Error) => {
          // How long without a session, for the node to say so now and then: an outage of etcd
          // otherwise shows only as the one 'session-lost'.
          this.emit('session-retry-failed', error, Math.round(performance.now() - this.sessionLostAt));
          this.scheduleResession();
        },
      );
    }, RESESSION_DELAY_MS);
  }

  private async startWatch(): Promise<void> {
    const prefix = clusterPrefix(this.cluster);
    const response = await this.client.getAll().prefix(prefix).exec();
    const view = emptyView();
    for (const kv of response.kvs) {
      applyKey(
        view,
        this.cluster,
        kv.key.toString(),
        kv.value.toString(),
        BigInt(kv.create_revision),
        BigInt(kv.mod_revision),
      );
    }
    view.revision = BigInt(response.header.revision);
    this.view = view;
    this.queueChange();
    const watcher = this.client
      .watch()
      .prefix(prefix)
      .startRevision(String(view.revision + 1n))
      .watcher();
    // An unhandled `error` (e.g. the watch was compacted away) would crash the process. A lost
    // stream is handled the same way, by a fresh read and a new watch: etcd3 would resume it
    // itself, but from the revision of the answer that re-created it plus one, and etcd sends
    // the events before that revision later, in its catch-up: a stream lost again before them
    // would lose them for good (etcd's own client resumes after the last event received).
    let connectedAt: number | undefined;
    const restart = () => {
      if (this.watcher !== watcher) return;
      this.watcher = undefined;
      watcher.cancel().catch(() => {});
      // Longer each time, unless the watch had stayed up a while: a stream that fails as soon as
      // it opens would otherwise have the whole prefix read four times a second.
      if (connectedAt !== undefined && performance.now() - connectedAt >= WATCH_STABLE_MS) {
        this.watchRetryMs = WATCH_RETRY_MS;
      }
      this.restartWatch(this.watchRetryMs);
      this.watchRetryMs = Math.min(this.watchRetryMs * 2, MAX_WATCH_RETRY_MS);
    };
    watcher.on('error', restart);
    watcher.on('disconnected', restart);
    watcher.on('connected', () => {
      connectedAt = performance.now();
    });
    watcher.on('put', (kv) => {
      if (this.watcher !== watcher) return;
      applyKey(
        this.view,
        this.cluster,
        kv.key.toString(),
        kv.value.toString(),
        BigInt(kv.create_revision),
        BigInt(kv.mod_revision),
      );
      this.view.revision = BigInt(kv.mod_revision);
      this.queueChange();
    });
    watcher.on('delete', (kv) => {
      if (this.watcher !== watcher) return;
      applyKey(this.view, this.cluster, kv.key.toString(), undefined, 0n, BigInt(kv.mod_revision));
      this.view.revision = BigInt(kv.mod_revision);
      this.queueChange();
    });
    // Closed while the watch was being set up (a restart in flight): nobody would cancel it.
    if (this.closed) {
      await cancelWithin(watcher, this.options.callTimeoutMs);
      return;
    }
    this.watcher = watcher;
  }

  /** Re-reads everything and watches again, retrying with backoff until it works or we close. */
  private restartWatch(delayMs: number): void {
    const timer = setTimeout(() => {
      if (this.closed) return;
      this.startWatch().catch(() => {
        this.emit('watch-error');
        this.restartWatch(Math.min(delayMs * 2, MAX_WATCH_RETRY_MS));
      });
    }, delayMs);
    timer.unref();
  }

  private queueChange(): void {
    if (this.changeQueued) return;
    this.changeQueued = true;
    queueMicrotask(() => {
      this.changeQueued = false;
      if (!this.closed) this.emit('change', this.view);
    });
  }

  private requireLease(): string {
    if (this.leaseId === undefined || !this.sessionValid()) {
      throw new CoordinatorError('SESSION_LOST', 'no live etcd session: wait for it to be re-established');
    }
    return this.leaseId;
  }

  /**
   * Becomes master of `partition` if it has none: a create-if-absent of the master key on this
   * node's lease. Resolves the fencing token (the key's create revision), or undefined if another
   * node holds it.
   */
  async claimMaster(partition: number, info: MasterInfo): Promise<bigint | undefined> {
    const leaseId = this.requireLease();
    const key = keys.master(this.cluster, partition);
    const result = await this.client
      .if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(JSON.stringify(info)).lease(leaseId))
      .commit();
    return result.succeeded ? BigInt(result.header.revision) : undefined;
  }

  /** The lease of the current session, or undefined without one: a new one after a lost session. */
  get session(): string | undefined {
    return this.leaseId;
  }

  /**
   * Records a handover: the master record with its `finalTxid`, and `partitions/<p>/handover`,
   * kept after the key goes, in one transaction, only while `token` still holds the mastership.
   */
  async recordHandover(
    partition: number,
    token: bigint,
    info: MasterInfo & { finalTxid: string },
  ): Promise<void> {
    await this.putMasterWhile(
      partition,
      token,
      info,
      this.client
        .put(keys.handover(this.cluster, partition))
        .value(JSON.stringify({ generation: info.generation, finalTxid: info.finalTxid })),
    );
  }

  /** Rewrites the master record, only while `token` still holds the mastership. */
  async updateMaster(partition: number, token: bigint, info: MasterInfo): Promise<void> {
    await this.putMasterWhile(partition, token, info);
  }

  /** Puts the master record (and `alongside`, in the same transaction) while `token` holds it. */
  private async putMasterWhile(
    partition: number,
    token: bigint,
    info: MasterInfo,
    ...alongside: ReturnType<Etcd3['put']>[]
  ): Promise<void> {
    // A live session still, but the key keeps the lease it was claimed on: moved onto a newer
    // session's lease, the claim of a node fenced meanwhile would outlive the lease that ended it.
    this.requireLease();
    const key = keys.master(this.cluster, partition);
    const result = await this.client
      .if(key, 'Create', '==', String(token))
      .then(this.client.put(key).value(JSON.stringify(info)).ignoreLease(), ...alongside)
      .commit();
    if (!result.succeeded) {
      throw new CoordinatorError(
        'NOT_MASTER',
        `mastership of partition ${partition} (token ${token}) is gone`,
      );
    }
  }

  /**
   * Compare-and-swap of the partition's generation: from `expected` (or whatever it is, when
   * omitted) to the next one, recording `lastTxid` as the end of the ended generation in the same
   * transaction. With `token`, it also requires that mastership to be current. With `atLeast`,
   * the next generation is no lower than that. Resolves the new generation; GENERATION_CONFLICT
   * when another writer won.
   */
  async bumpGeneration(args: {
    partition: number;
    lastTxid: bigint;
    expected?: bigint;
    token?: bigint;
    atLeast?: bigint;
  }): Promise<bigint> {
    const genKey = keys.generation(this.cluster, args.partition);
    for (let attempt = 0; attempt < 5; attempt++) {
      const current = await this.client.get(genKey).exec();
      const kv = current.kvs[0];
      const value = kv?.value.toString();
      if (value !== undefined && !isGeneration(value)) {
        throw new CoordinatorError(
          'BAD_VALUE',
          badGenerationMessage(genKey, value, this.view.partitions.get(args.partition)),
        );
      }
      const generation = value === undefined ? 0n : BigInt(value);
      if (args.expected !== undefined && generation !== args.expected) break;
      let txn = this.client.if(genKey, 'Mod', '==', kv === undefined ? 0 : kv.mod_revision);
      if (args.token !== undefined)
        txn = txn.and(keys.master(this.cluster, args.partition), 'Create', '==', String(args.token));
      const next =
        args.atLeast !== undefined && args.atLeast > generation + 1n ? args.atLeast : generation + 1n;
      const ops = [this.client.put(genKey).value(next.toString())];
      if (generation > 0n) {
        ops.push(
          this.client
            .put(keys.history(this.cluster, args.partition, generation))
            .value(args.lastTxid.toString()),
        );
      }
      // A jump past etcd's generation (to past this node's log, see atLeast) ends the log's own
      // generation too, where this node's log ends: a node back later with more records of it
      // (a master whose last writes no one else had) has them cut, as after any failover.
      if (next - 1n > generation) {
        ops.push(
          this.client
            .put(keys.history(this.cluster, args.partition, next - 1n))
            .value(args.lastTxid.toString()),
        );
      }
      const result = await txn.then(...ops).commit();
      if (result.succeeded) return next;
      if (args.token !== undefined) {
        const master = await this.client.get(keys.master(this.cluster, args.partition)).exec();
        if (master.kvs[0]?.create_revision !== String(args.token)) {
          throw new CoordinatorError(
            'NOT_MASTER',
            `mastership of partition ${args.partition} was lost before the generation bump`,
          );
        }
      }
      if (args.expected !== undefined) break;
    }
    throw new CoordinatorError(
      'GENERATION_CONFLICT',
      `generation of partition ${args.partition} was changed by another node: re-read the cluster view`,
    );
  }

  /**
   * Ends the session of a master whose process is gone, instead of waiting up to a lease TTL for
   * etcd to notice: revokes the lease under partition `partition`'s master key, but only while
   * that key is still the mastership `token` names (a later master is never touched) and is not
   * this node's own. Every key on that lease goes with it (the node's record, its other
   * masterships), so elections start at once. Unlike an expiry, a revocation does not wait for
   * the holder's own deadline: if the holder were alive after all, it stops taking writes only
   * when its watch shows the key gone (docs/operations.md says what that trades). Resolves
   * whether this call revoked it.
   */
  async revokeMasterLease(partition: number, token: bigint): Promise<boolean> {
    const current = await this.client.get(keys.master(this.cluster, partition)).exec();
    const kv = current.kvs[0];
    if (kv === undefined || kv.create_revision !== String(token)) return false;
    if (kv.lease === '0' || kv.lease === this.leaseId) return false;
    try {
      await this.client.leaseClient.leaseRevoke({ ID: kv.lease });
      return true;
    } catch (error) {
      // Another replica revoked it first, or it ran out meanwhile.
      if (error instanceof EtcdLeaseInvalidError) return false;
      throw error;
    }
  }

  /** Gives up mastership (the key goes only if `token` still names it). Never hangs: bounded by the call deadline. */
  async resignMaster(partition: number, token: bigint): Promise<void> {
    const key = keys.master(this.cluster, partition);
    await this.client.if(key, 'Create', '==', String(token)).then(this.client.delete().key(key)).commit();
  }

  /** Publishes this node's applied txid of `partition`, for the promotion ranking. */
  async reportApplied(partition: number, txid: bigint): Promise<void> {
    const leaseId = this.requireLease();
    await this.client
      .put(keys.replica(this.cluster, partition, this.nodeId))
      .value(txid.toString())
      .lease(leaseId);
  }

  /** Removes this node's applied-txid key of `partition`: it no longer holds the partition. */
  async withdrawReplica(partition: number): Promise<void> {
    await this.client
      .delete()
      .key(keys.replica(this.cluster, partition, this.nodeId))
      .exec();
  }

  /** Stops the watchdog and the watch, revokes the lease (bounded) and closes the client. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.resessionTimer);
    const watcher = this.watcher;
    this.watcher = undefined;
    if (watcher !== undefined) await cancelWithin(watcher, this.options.callTimeoutMs);
    const lease = this.lease;
    this.lease = undefined;
    this.leaseId = undefined;
    if (lease !== undefined) await lease.revoke().catch(() => lease.release());
    this.client.close();
  }
}

/**
 * Cancels a watch, waiting at most `ms`: etcd3's cancel waits for the stream to end, which an
 * etcd that is frozen (or a link dropping packets) never lets happen, and a stop would hang.
 */

const WATCH_RETRY_MS = 250;
const MAX_WATCH_RETRY_MS = 2000;
/** A watch up this long before it was lost restarts at WATCH_RETRY_MS again. */
const WATCH_STABLE_MS = 10_000;
async function cancelWithin(watcher: Watcher, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    watcher.cancel().catch(() => {}),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

function describeSettings(settings: ClusterSettings): string {
  const factor = settings.replicationFactor === 0 ? 'every node' : String(settings.replicationFactor);
  return `${settings.partitions} partition(s), replication factor ${factor}`;
}

function unreachable(endpoints: string[], error: unknown): CoordinatorError {
  if (error instanceof CoordinatorError) return error;
  return new CoordinatorError(
    'ETCD_UNREACHABLE',
    `etcd at ${endpoints.join(',')} is unreachable (${(error as Error).message.split('\n')[0]}): start etcd or fix the endpoints`,
    { cause: error },
  );
}
