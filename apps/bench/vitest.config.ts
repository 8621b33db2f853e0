import { defineConfig } from 'vitest/config';

// Only the pure parts of the benchmarks are tested; the scenarios themselves are run by hand.
export default defineConfig({ test: { include: ['test/**/*.test.ts'] } });
