import { defineConfig } from 'vitest/config';

// Every test here starts real processes: etcd alone needs ~1 s to elect itself.
export default defineConfig({ test: { include: ['test/**/*.test.ts'], testTimeout: 30_000 } });
