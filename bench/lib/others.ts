/**
 * Other processes that would disturb a measurement: another bench (any `bench/<name>/*.ts` run
 * under node), a `keyward` server that is not ours (bin/keyward.js, or src/cli/main.ts serve|dev
 * and src/server/*.ts as tests spawn it), or test runs (vitest) of other sessions on the same
 * machine. Read from /proc (Linux); empty elsewhere.
 */
import { readdirSync, readFileSync } from "node:fs";

export interface OtherProcess {
  readonly pid: number;
  readonly kind: "bench" | "keyward" | "vitest";
  readonly command: string;
}

/** Descendants of `root` (inclusive), from /proc/<pid>/stat's ppid field. */
function descendants(root: number): Set<number> {
  const parent = new Map<number, number>();
  for (const d of safeList()) {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      parent.set(d, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // gone
    }
  }
  const mine = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of parent) if (!mine.has(pid) && mine.has(ppid)) (mine.add(pid), (grew = true));
  }
  return mine;
}

function safeList(): number[] {
  try {
    return readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map(Number);
  } catch {
    return [];
  }
}

/** Bench, keyward and vitest processes that are neither this process nor started by it. */
export function otherBenchProcesses(self = process.pid): OtherProcess[] {
  const mine = descendants(self);
  // Our own ancestors too (npm run → sh → node): not "others".
  let cur = self;
  for (let i = 0; i < 10; i++) {
    try {
      const stat = readFileSync(`/proc/${cur}/stat`, "utf8");
      cur = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (cur <= 1) break;
      mine.add(cur);
    } catch {
      break;
    }
  }
  const out: OtherProcess[] = [];
  for (const pid of safeList()) {
    if (mine.has(pid)) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
    } catch {
      continue;
    }
    if (!cmd) continue;
    const kind = /\bbench\/[\w-]+\/[\w-]+\.ts\b|npm run bench:/.test(cmd)
      ? "bench"
      : /bin\/keyward(\.js)?\b|\bsrc\/server\/[\w-]+\.ts\b|\bsrc\/cli\/main\.ts (serve|dev)\b|keyward-cluster-worker/.test(cmd)
        ? "keyward"
        : /\bvitest\b/.test(cmd)
          ? "vitest"
          : undefined;
    if (kind) out.push({ pid, kind, command: cmd.length > 160 ? `${cmd.slice(0, 157)}...` : cmd });
  }
  return out;
}
