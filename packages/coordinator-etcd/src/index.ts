export { Coordinator, type CoordinatorOptions, DEFAULT_FENCE_MARGIN_MS } from './coordinator.ts';
export { CoordinatorError, type CoordinatorErrorCode } from './errors.ts';
export { keys, NODE_ID_PATTERN } from './keys.ts';
export { partitionMembers, placeReplicas } from './placement.ts';
export {
  type ClusterSettings,
  type ClusterView,
  currentHandover,
  type MasterInfo,
  type MasterView,
  masterOfCurrentProcess,
  type NodeInfo,
  type PartitionView,
  rankCandidates,
  reportedByCurrentProcess,
  reportedSinceMasterLeft,
} from './view.ts';
