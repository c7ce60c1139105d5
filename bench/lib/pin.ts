import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { existsSync } from "node:fs";

/** taskset, when this machine has it (util-linux); without it everything runs unpinned. */
export const TASKSET = ["/usr/bin/taskset", "/bin/taskset"].find((p) => existsSync(p));

/**
 * Spawns `command args` pinned to one CPU core (or a taskset list such as "0,1") with taskset (threads the process starts, such as
 * libuv's thread pool, inherit the affinity), or unpinned when taskset is missing.
 */
export function spawnPinned(core: number | string, command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  if (!TASKSET) return spawn(command, args, options);
  return spawn(TASKSET, ["-c", String(core), command, ...args], options);
}

/** Pins an already running process (e.g. this one) to one core; false when that is not possible. */
export async function pinPid(pid: number, core: number): Promise<boolean> {
  if (!TASKSET) return false;
  const child = spawn(TASKSET, ["-a", "-cp", String(core), String(pid)], { stdio: "ignore" });
  return new Promise((resolve) => {
    child.on("exit", (code) => resolve(code === 0));
    child.on("error", () => resolve(false));
  });
}
