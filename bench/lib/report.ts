import { appendFileSync, existsSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { summarizeCpuProfile } from "./cpuprofile.js";
import { inclusiveTimes } from "./cpuprofile-inclusive.js";
import { table } from "./harness.js";

/** Appends one run's section to bench/RESULTS.md (creating it with its header); returns the path. */
export function appendResults(root: string, text: string): string {
  const results = join(root, "bench/RESULTS.md");
  if (!existsSync(results)) writeFileSync(results, "# Bench results\n\nAppended by the bench runners (see bench/README.md). Newest last.\n\n");
  appendFileSync(results, `${text}\n`);
  return results;
}

/** Prints a KMS CPU profile: self time by script and function, and inclusive time of the project's code. */
export function printCpuProfile(root: string, target: string): void {
  const s = summarizeCpuProfile(target, 30);
  console.log(`KMS CPU profile (${relative(root, target)}, ${statSync(target).size} B): busy ${s.busyPct.toFixed(0)}% of samples`);
  console.log(table([["self time by script", "% of busy"], ...s.scripts.slice(0, 15).map((l) => [l.name, l.selfPct.toFixed(1)])]));
  console.log("");
  console.log(table([["self time by function", "% of busy"], ...s.functions.map((l) => [l.name, l.selfPct.toFixed(1)])]));
  console.log("");
  const inc = inclusiveTimes(target, (k) => /(src|dist)\/|node:internal\/crypto|better-sqlite3|jose\//.test(k), 30);
  console.log(table([["total (inclusive, synchronous) time", "% of busy", "self %"], ...inc.map((l) => [l.name, l.totalPct.toFixed(1), l.selfPct.toFixed(1)])]));
}
