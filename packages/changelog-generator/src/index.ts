export { followWatcher } from './follow-watcher.ts';
export {
  type AppendListener,
  ChangelogError,
  type ChangelogErrorCode,
  ChangelogGenerator,
  type ChangelogGeneratorOptions,
} from './generator.ts';
export { findUnloggedChanges, type UnloggedChange } from './store-check.ts';
