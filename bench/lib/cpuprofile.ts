import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples?: number[];
  timeDeltas?: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileLine {
  readonly name: string;
  readonly selfPct: number;
}

/** Shortens a script URL to something readable: the package, or the path under src/ or dist/. */
function where(url: string): string {
  if (!url) return "";
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + "node_modules/".length).split("/").slice(0, 1).join("/") + "/…/" + url.split("/").pop();
  const m = /\/(src|dist)\/(.*)$/.exec(url);
  if (m) return `${m[1]}/${m[2]}`;
  return url.replace(/^file:\/\//, "");
}

/**
 * Self time of a V8 .cpuprofile (what `node --cpu-prof` writes), by function and by script,
 * excluding the idle node; percentages of the busy (non-idle) samples.
 */
export function summarizeCpuProfile(path: string, top = 20): { busyPct: number; functions: ProfileLine[]; scripts: ProfileLine[]; inclusive: ProfileLine[] } {
  const p = JSON.parse(readFileSync(path, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + (deltas[i] ?? 0));
  let idle = 0;
  let busy = 0;
  const fn = new Map<string, number>();
  const script = new Map<string, number>();
  for (const [id, t] of self) {
    const n = byId.get(id)!;
    const name = n.callFrame.functionName || "(anonymous)";
    if (name === "(idle)") {
      idle += t;
      continue;
    }
    busy += t;
    const w = where(n.callFrame.url);
    const key = w ? `${name} ${w}:${n.callFrame.lineNumber + 1}` : name;
    fn.set(key, (fn.get(key) ?? 0) + t);
    const s = w ? w.split(":")[0]! : name.startsWith("(") ? name : "(native)";
    script.set(s, (script.get(s) ?? 0) + t);
  }
  // Inclusive (total) time of project and jose functions: each sample counted once per function on its stack.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map<string, number>();
  for (const [id, t] of self) {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur)!;
      const w = where(n.callFrame.url);
      if (!/^(src|dist)\/|^jose\//.test(w) || !n.callFrame.functionName) continue;
      const key = `${n.callFrame.functionName} ${w}`;
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + t);
    }
  }
  const lines = (m: Map<string, number>) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, t]) => ({ name, selfPct: (100 * t) / busy }));
  return { busyPct: (100 * busy) / (busy + idle), functions: lines(fn), scripts: lines(script), inclusive: lines(inclusive) };
}
