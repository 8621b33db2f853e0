import { defineConfig } from 'vitest/config';

// Generous: a test's time limit only catches hangs; a loaded CI disk can make fsync-heavy tests slow.
export default defineConfig({ test: { include: ['test/**/*.test.ts'], testTimeout: 30_000 } });
