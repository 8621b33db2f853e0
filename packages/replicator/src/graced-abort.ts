/**
 * An AbortSignal that follows `parent` at once until `relax()` is called, and `graceMs` after the
 * parent's abort from then on. For a process whose harmful part is over (an rsync whose files
 * are all in place): an abort may let it exit on its own before killing it. `dispose()` once the
 * work has ended drops the listener and any pending timer.
 */
export interface GracedAbort {
  signal: AbortSignal;
  relax(): void;
  dispose(): void;
}

export function gracedAbort(parent: AbortSignal, graceMs: number): GracedAbort {
  const controller = new AbortController();
  let relaxed = false;
  let timer: NodeJS.Timeout | undefined;
  const onAbort = () => {
    if (!relaxed) controller.abort(parent.reason);
    else timer = setTimeout(() => controller.abort(parent.reason), graceMs);
  };
  if (parent.aborted) controller.abort(parent.reason);
  else parent.addEventListener('abort', onAbort, { once: true });
  return {
    signal: controller.signal,
    relax(): void {
      relaxed = true;
    },
    dispose(): void {
      parent.removeEventListener('abort', onAbort);
      clearTimeout(timer);
    },
  };
}
