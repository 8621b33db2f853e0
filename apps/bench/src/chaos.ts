import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { partitionOf } from '@pfs/filestore';
import { NodeProcess, type NodeSpec, sleep, startEtcd, waitFor } from '@pfs/testkit';
import { benchNodeSpec } from './cluster.ts';
import { placementSettled } from './placement.ts';

/** What a path holds as far as the writers know: set by an acknowledged write or a 404 on delete. */
type Known = { body: string } | { absent: true };

/**
 * Nothing acknowledged is lost, under failure: writers PUT and DELETE their own paths (with
 * `ack=one`, or the given mode) through random nodes while, one at a time, a random node is
 * killed (SIGKILL, or SIGTERM for a handover) and started again on its data dir after a pause
 * that may outlast the placement grace, so partitions fail over, move away and come back (with
 * `etcdPauses`, etcd also freezes now and then). Then every node is up, the placement settles
 * and the replicas catch up, and each path's copies are read from the stores of the nodes that
 * hold its partition.
 *
 * Counted as failures: an acknowledged put missing or with other bytes (`lost`, `wrongBytes`),
 * an acknowledged delete whose file is back (`resurrected`), copies of a path whose last write
 * had no definite answer that disagree (`divergent`) or hold neither its last acknowledged state
 * nor one of the writes since (`lost`), a path held by fewer nodes than the factor (or, with the
 * factor 0, than there are nodes: `copiesShort`), and any 5xx answer other than 503 and 504
 * (`serverErrors`). A write with no definite answer is one answered `504`, `503
 * OUTCOME_UNKNOWN`, or cut off.
 */
export async function measureChaos(options: {
  nodes: number;
  partitions: number;
  replicationFactor: number;
  seconds: number;
  writers: number;
  pathsPerWriter: number;
  placementGraceMs: number;
  /** `one` by default; `local` holds too here, where a killed agent's host and rsync daemon live on. */
  ack?: 'local' | 'one';
  /** Also freeze etcd (SIGSTOP, then SIGCONT 1–4 s later) at a fifth of the events. */
  etcdPauses?: boolean;
  /**
   * Paths nest (`t1`, `t1/u0`, `t1/u0/v1`), so that a file and a directory take turns at one
   * path: hashed to different partitions, whose replicas apply them each in its own order.
   */
  nested?: boolean;
}) {
  const base = await mkdtemp(join(tmpdir(), 'pfs-chaos-'));
  const etcd = await startEtcd();
  const everyProcess: NodeProcess[] = [];
  const slots: { spec: NodeSpec; node: NodeProcess | undefined }[] = [];
  let failures = 0;
  // A run that stopped half-way keeps its data dirs too, to be looked into.
  let finished = false;
  try {
    const cluster = `chaos-${Date.now().toString(36)}`;
    for (let i = 0; i < options.nodes; i++) {
      const spec = await benchNodeSpec({
        base,
        etcd: etcd.endpoint,
        cluster,
        partitions: options.partitions,
        extraArgs: [
          '--log-level=info',
          '--watch=false',
          `--replication-factor=${options.replicationFactor}`,
          `--placement-grace-ms=${options.placementGraceMs}`,
        ],
      });
      slots.push({ spec, node: undefined });
    }
    const start = async (slot: (typeof slots)[number]) => {
      slot.node = await NodeProcess.start(slot.spec);
      everyProcess.push(slot.node);
    };
    for (const slot of slots) await start(slot);
    await placementSettled(live(), { timeoutMs: 120_000 });

    const known = new Map<string, Known>();
    const unsure = new Map<string, Known[]>();
    const outcomes = {
      acknowledged: 0,
      noDefiniteAnswer: 0,
      refusedThroughout: 0,
      putConflicts: 0,
      deleteConflicts: 0,
    };
    const statuses: Record<string, number> = {};
    const serverErrors: string[] = [];
    const conflictExamples: string[] = [];
    let writing = true;
    function live(): NodeProcess[] {
      return slots.flatMap((s) => (s.node?.running ? [s.node] : []));
    }
    const anyLive = () => {
      const nodes = live();
      return nodes[Math.floor(Math.random() * nodes.length)]!;
    };

    /** One write, retried while it is refused for sure (no master, a node down); its outcome. */
    const write = async (path: string, body: string | undefined) => {
      let url = `${anyLive().url}/v1/files/${path}`;
      for (let attempt = 0; attempt < 300 && writing; attempt++) {
        let response: Response;
        try {
          response = await fetch(url, {
            method: body === undefined ? 'DELETE' : 'PUT',
            ...(body === undefined ? {} : { body }),
            redirect: 'manual',
            headers: { 'x-pfs-ack': options.ack ?? 'one', 'x-pfs-ack-timeout-ms': '3000' },
            signal: AbortSignal.timeout(15_000),
          });
        } catch (error) {
          // Refused: nothing was sent. Anything else may have reached the master. A master just
          // killed is still named by the others until its lease runs out.
          if ((error as { cause?: { code?: string } }).cause?.code !== 'ECONNREFUSED') return 'unsure';
          await sleep(50);
          url = `${anyLive().url}/v1/files/${path}`;
          continue;
        }
        const answer = await response.text();
        statuses[response.status] = (statuses[response.status] ?? 0) + 1;
        if (response.status >= 500 && response.status !== 503 && response.status !== 504)
          serverErrors.push(
            `${body === undefined ? 'DELETE' : 'PUT'} ${path} ${response.status}: ${answer.slice(0, 300)}`,
          );
        if (response.status === 201 || response.status === 200) return 'acknowledged';
        // A file where a directory of the path goes, or a directory holding files where it goes:
        // refused, nothing written (a lagging master's store may say so of a path already freed).
        if (response.status === 409) {
          // A delete of a path that is a directory is refused too (PATH_IS_DIRECTORY).
          if (body !== undefined && conflictExamples.length < 5)
            conflictExamples.push(`PUT ${path}: ${answer.slice(0, 200)}`);
          return 'conflict';
        }
        if (response.status === 404 && body === undefined) return 'absent';
        if (response.status === 307) {
          url = response.headers.get('location')!;
          continue;
        }
        const code = (() => {
          try {
            return (JSON.parse(answer) as { code?: string }).code;
          } catch {
            return undefined;
          }
        })();
        if (response.status === 503 && code !== 'OUTCOME_UNKNOWN') {
          await sleep(100);
          url = `${anyLive().url}/v1/files/${path}`;
          continue;
        }
        return 'unsure';
      }
      return 'refused';
    };

    const writers = Array.from({ length: options.writers }, async (_, w) => {
      let n = 0;
      const tree = options.nested === true ? nestedPaths(`w${w}`, options.pathsPerWriter) : undefined;
      while (writing) {
        let path = tree
          ? tree[Math.floor(Math.random() * tree.length)]!
          : `w${w}/f${Math.floor(Math.random() * options.pathsPerWriter)}`;
        let body =
          Math.random() < 0.75
            ? `${path} #${++n} ${'x'.repeat(Math.floor(Math.random() * 2000))}`
            : undefined;
        if (tree !== undefined && body !== undefined) {
          // A put under a file, or over a directory of files, this writer may have made is a
          // conflict the cluster cannot settle (docs/architecture.md, "Replication path"): that path
          // is deleted first instead, so that only paths the writer knows free are put.
          const put = path;
          const inTheWay = tree.find(
            (other) =>
              clash(other, put) &&
              (unsure.has(other) || !('absent' in (known.get(other) ?? { absent: true }))),
          );
          if (inTheWay !== undefined) {
            path = inTheWay;
            body = undefined;
          }
        }
        const outcome = await write(path, body);
        if (outcome === 'conflict') outcomes[body === undefined ? 'deleteConflicts' : 'putConflicts']++;
        else if (outcome === 'acknowledged' || outcome === 'absent') {
          outcomes.acknowledged++;
          known.set(path, body === undefined ? { absent: true } : { body });
          unsure.delete(path);
        } else if (outcome === 'unsure') {
          outcomes.noDefiniteAnswer++;
          // What the path may hold: its last acknowledged state, or any write since without an answer.
          const possible = unsure.get(path) ?? [known.get(path) ?? { absent: true }];
          possible.push(body === undefined ? { absent: true } : { body });
          unsure.set(path, possible);
        } else outcomes.refusedThroughout++;
      }
    });

    const events = { sigkill: 0, sigterm: 0, restarts: 0, etcdPauses: 0, downMs: [] as number[] };
    const deadline = performance.now() + options.seconds * 1000;
    let eventNumber = 0;
    while (performance.now() < deadline) {
      await sleep(1000 + Math.random() * 3000);
      // Every fifth event, from the second on: a short run has its freezes too.
      if (options.etcdPauses === true && eventNumber++ % 5 === 1) {
        // Unreachable while frozen; longer than the lease TTL, every lease ends when it resumes.
        etcd.kill('SIGSTOP');
        events.etcdPauses++;
        await sleep(1000 + Math.random() * 3000);
        etcd.kill('SIGCONT');
        continue;
      }
      const slot = slots[Math.floor(Math.random() * slots.length)]!;
      const node = slot.node!;
      if (Math.random() < 0.7) {
        node.kill('SIGKILL');
        events.sigkill++;
        await waitFor(`${node.id} gone`, async () => (node.running ? undefined : true));
      } else {
        await node.stop();
        events.sigterm++;
      }
      const downMs = 1000 + Math.random() * 2 * options.placementGraceMs;
      events.downMs.push(Math.round(downMs));
      await sleep(downMs);
      await start(slot);
      events.restarts++;
    }
    writing = false;
    await Promise.all(writers);

    const settleStarted = performance.now();
    await placementSettled(live(), { timeoutMs: 180_000 });
    // Every holder of each partition at its master's last txid.
    let behind: string[] = [];
    await waitFor(
      'the replicas to catch up',
      async () => {
        const all = await Promise.all(live().map((n) => n.status()));
        behind = [];
        for (let p = 0; p < options.partitions; p++) {
          const master = all.find((s) => s.partitions[p]!.role === 'master');
          if (master === undefined) {
            behind.push(`partition ${p}: no master`);
            continue;
          }
          const last = master.partitions[p]!.lastTxid;
          for (const s of all)
            if (s.partitions[p]!.holds && s.partitions[p]!.lastTxid !== last)
              behind.push(`partition ${p}: ${s.nodeId} at ${s.partitions[p]!.lastTxid}, master at ${last}`);
        }
        return behind.length === 0 ? true : undefined;
      },
      180_000,
    ).catch((error: Error) => {
      throw new Error(`${error.message} (${behind.join('; ')}; data kept in ${base})`);
    });
    const settleSeconds = (performance.now() - settleStarted) / 1000;

    const holders = new Map<number, NodeProcess[]>();
    const all = await Promise.all(live().map(async (n) => ({ node: n, status: await n.status() })));
    for (let p = 0; p < options.partitions; p++)
      holders.set(
        p,
        all.filter((s) => s.status.partitions[p]!.holds).map((s) => s.node),
      );
    const found = { lost: 0, wrongBytes: 0, resurrected: 0, divergent: 0, copiesShort: 0 };
    const examples: string[] = [];
    const note = (kind: keyof typeof found, path: string, detail: string) => {
      found[kind]++;
      if (examples.length < 20) examples.push(`${kind} ${path}: ${detail}`);
    };
    const paths = new Set([...known.keys(), ...unsure.keys()]);
    const copiesWanted = options.replicationFactor > 0 ? options.replicationFactor : live().length;
    const holds = (copy: string | undefined, state: Known) =>
      'absent' in state ? copy === undefined : copy === state.body;
    for (const path of paths) {
      const nodes = holders.get(partitionOf(path, options.partitions))!;
      if (nodes.length < copiesWanted) note('copiesShort', path, `held by ${nodes.length}`);
      const copies = await Promise.all(
        nodes.map((n) => readFile(join(n.fileStore, path), 'utf8').catch(() => undefined)),
      );
      const possible = unsure.get(path);
      if (possible !== undefined) {
        if (new Set(copies).size > 1)
          note('divergent', path, `copies differ on ${nodes.map((n) => n.id).join(', ')}`);
        else if (!possible.some((state) => holds(copies[0], state)))
          note('lost', path, `neither its last acknowledged state nor a write without an answer since`);
        continue;
      }
      const want = known.get(path)!;
      for (const [i, copy] of copies.entries()) {
        const where = nodes[i]!.id;
        if ('absent' in want) {
          if (copy !== undefined) note('resurrected', path, `deleted, but present on ${where}`);
        } else if (copy === undefined) note('lost', path, `missing on ${where}`);
        else if (copy !== want.body) note('wrongBytes', path, `other bytes on ${where}`);
      }
    }
    failures = Object.values(found).reduce((a, b) => a + b, 0) + serverErrors.length;
    // Not failures: what nodes set aside on the way (a returning master's unlogged or divergent
    // bytes), by kind, for a sense of how much the chaos cost.
    const quarantined: Record<string, number> = {};
    for (const node of live()) {
      const listed = (await (await fetch(`${node.url}/v1/quarantine`)).json()) as {
        entries: { kind: string }[];
      };
      for (const { kind } of listed.entries) quarantined[kind] = (quarantined[kind] ?? 0) + 1;
    }
    finished = true;
    return {
      scenario: 'chaos',
      params: options,
      ...events,
      downMs: undefined,
      longestDownMs: Math.max(0, ...events.downMs),
      ...outcomes,
      answers: statuses,
      pathsChecked: paths.size - unsure.size,
      pathsUnsure: unsure.size,
      settleSeconds: Math.round(settleSeconds * 10) / 10,
      ...found,
      serverErrors: serverErrors.length,
      quarantined,
      failures,
      examples: [...examples, ...serverErrors.slice(0, 10), ...conflictExamples],
      ...(failures > 0 ? { keptDataDir: base } : {}),
    };
  } finally {
    await Promise.all(slots.map((s) => (s.node?.running ? s.node.stop() : undefined)));
    await Promise.all(everyProcess.map((n) => n.destroy()));
    await etcd.stop();
    if (finished && failures === 0) await rm(base, { recursive: true, force: true });
  }
}

/** A writer's paths, three deep: `t<i>`, `t<i>/u<j>`, `t<i>/u<j>/v<k>`, about `count` of them. */
function nestedPaths(prefix: string, count: number): string[] {
  const paths: string[] = [];
  for (let i = 0; paths.length < count; i++) {
    paths.push(`${prefix}/t${i}`);
    for (let j = 0; j < 3; j++) {
      paths.push(`${prefix}/t${i}/u${j}`);
      for (let k = 0; k < 2; k++) paths.push(`${prefix}/t${i}/u${j}/v${k}`);
    }
  }
  return paths;
}

/** Whether one path is a directory of the other: the two cannot both be files. */
function clash(a: string, b: string): boolean {
  return a !== b && (a.startsWith(`${b}/`) || b.startsWith(`${a}/`));
}
