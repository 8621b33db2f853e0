import type { ChangelogGenerator } from '@pfs/changelog-generator';
import type { TxLog } from '@pfs/txlog';
import type { NodeConfig } from './config.ts';
import type { NodeMetrics } from './metrics.ts';
import type { PartitionController } from './partition-controller.ts';
import type { AckMode } from './replica-acks.ts';

/** What the HTTP layer may see of the agent. */
export interface AgentState {
  config: NodeConfig;
  metrics: NodeMetrics;
  logs: TxLog[];
  controllers: PartitionController[];
  generator: ChangelogGenerator;
  masterOf(partition: number): { nodeId: string; host: string; httpPort: number } | undefined;
  /**
   * The recorded end of `txid`'s generation when the cluster ended that generation before it
   * (the write was lost in a failover), else undefined (see agreedByHistory).
   */
  lostAt(partition: number, txid: bigint): bigint | undefined;
  /** A follower's fetch `after` acknowledges everything up to it. */
  noteReplicaAck(partition: number, replica: string, after: bigint): void;
  /** Resolves true once `txid` is acknowledged as `mode` demands, false after `timeoutMs`. */
  waitForAcks(partition: number, txid: bigint, mode: AckMode, timeoutMs: number): Promise<boolean>;
  /** Registers a long poll so shutdown can end it; returns the release function, or undefined when stopping. */
  trackPoll(controller: AbortController): (() => void) | undefined;
  status(): unknown;
}
