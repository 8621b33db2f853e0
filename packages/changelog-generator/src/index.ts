export { followWatcher } from './follow-watcher.ts';
export {
  type AppendListener,
  ChangelogError,
  type ChangelogErrorCode,
  ChangelogGenerator,
  type ChangelogGeneratorOptions,
  type WritePrecondition,
} from './generator.ts';
export {
  findUnloggedChanges,
  findUnloggedChangesOf,
  type LogCheckOutcome,
  type LogToCheck,
  type UnloggedChange,
} from './store-check.ts';
