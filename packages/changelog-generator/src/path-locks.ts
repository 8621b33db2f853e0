/** Serialises async work per key: work for one key runs in call order, other keys run in parallel. */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(work, work);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }

  /**
   * Resolves when the work queued so far for the keys `which` accepts (every key by default) has
   * finished. Work queued later is not waited for: under steady load there always is some.
   */
  async idle(which: (key: string) => boolean = () => true): Promise<void> {
    await Promise.all([...this.tails].filter(([key]) => which(key)).map(([, tail]) => tail));
  }
}
