export { followWatcher } from './follow-watcher.ts';
export {
  type AppendListener,
  ChangelogError,
  type ChangelogErrorCode,
  ChangelogGenerator,
  type ChangelogGeneratorOptions,
} from './generator.ts';
