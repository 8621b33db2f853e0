export { TestkitError, type TestkitErrorCode } from './errors.ts';
export { type EtcdHandle, type StartEtcdOptions, startEtcd } from './etcd.ts';
export {
  AGENT_NODE_FLAGS,
  killRsyncDaemonOf,
  NodeProcess,
  type NodeSpec,
  type NodeStatus,
  type PartitionStatus,
  sleep,
  waitFor,
} from './node-process.ts';
export { freePort, freePortBase } from './ports.ts';
export { groupAlive } from './process-group.ts';
export { liveCount, stopAll } from './registry.ts';
export { type RsyncDaemonHandle, type StartRsyncDaemonOptions, startRsyncDaemon } from './rsync-daemon.ts';
export { makeTempDir, removeTempDir } from './temp.ts';
