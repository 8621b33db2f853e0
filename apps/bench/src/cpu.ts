import { readFileSync } from 'node:fs';

/**
 * CPU time spent during a measurement, from /proc (Linux): the whole machine's busy time (every
 * core, user + system + interrupts, not idle or I/O wait) and, per named process, its own user +
 * system time (threads included, children not). In milliseconds.
 */
export interface CpuSample {
  boxBusyMs: number;
  boxTotalMs: number;
  processMs: Record<string, number>;
}

const TICK_MS = 10; // USER_HZ is 100 on Linux

export function sampleCpu(processes: Record<string, number> = {}): CpuSample {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((sum, value) => sum + value, 0);
  const idle = fields[3]! + fields[4]!;
  const processMs: Record<string, number> = {};
  for (const [name, pid] of Object.entries(processes)) processMs[name] = processTicks(pid) * TICK_MS;
  return { boxBusyMs: (total - idle) * TICK_MS, boxTotalMs: total * TICK_MS, processMs };
}

function processTicks(pid: number): number {
  try {
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return Number.NaN;
  }
}

/** CPU milliseconds per operation between two samples: the machine's and each process's. */
export function cpuPerOperation(before: CpuSample, after: CpuSample, operations: number) {
  const per = (ms: number) => Math.round((ms / Math.max(operations, 1)) * 1000) / 1000;
  const result: Record<string, number> = {
    boxBusy:
      Math.round(((after.boxBusyMs - before.boxBusyMs) / (after.boxTotalMs - before.boxTotalMs)) * 100) / 100,
    box: per(after.boxBusyMs - before.boxBusyMs),
  };
  for (const name of Object.keys(after.processMs))
    result[name] = per(after.processMs[name]! - (before.processMs[name] ?? 0));
  return result;
}
