/**
 * Runs a bench's main function with its cleanup: after success, after a failure (exit 1), and on
 * SIGINT/SIGTERM, so every process a bench starts is stopped by its own PID whatever happens.
 *
 * @example
 * await runBench(main, cleanup);
 */
export async function runBench(main: () => Promise<void>, cleanup: () => Promise<void>): Promise<void> {
  process.once("SIGINT", () => void cleanup().then(() => process.exit(130)));
  process.once("SIGTERM", () => void cleanup().then(() => process.exit(143)));
  try {
    await main();
    await cleanup();
  } catch (e) {
    console.error(e instanceof Error ? e.stack ?? e.message : e);
    await cleanup();
    process.exit(1);
  }
}
