// Owns running the fuzz targets: `npm run fuzz` (1,000,000 inputs per target, the checks after every
// 100; --count, --seed, --target, --check-every to change), printing inputs, time and failures per
// target. Exit status 1 on a failure.
import { Rng } from './mutate.js';
import { ALL_TARGETS, type FuzzTarget } from './targets.js';

export interface FuzzResult {
  target: string;
  inputs: number;
  seconds: number;
  failures: string[];
}

/**
 * Runs `count` inputs into one target from `seed`, with the target's checks (other connections
 * served, memory bounded) after every `checkEvery` inputs; stops at the first failure.
 */
export async function fuzz(make: () => FuzzTarget, count: number, seed: number, checkEvery = 1, progress?: (done: number) => void): Promise<FuzzResult> {
  const target = make();
  const failures: string[] = [];
  const unhandled = (e: unknown): void => void failures.push(`unhandled rejection: ${e instanceof Error ? e.stack : String(e)}`);
  process.on('unhandledRejection', unhandled);
  const started = performance.now();
  let done = 0;
  await target.open();
  try {
    const rng = new Rng(seed);
    for (; done < count && failures.length === 0; done++) {
      const inputSeed = rng.u32();
      try {
        await target.run(new Rng(inputSeed));
      } catch (e) {
        failures.push(`input ${done} (seed ${inputSeed}): ${e instanceof Error ? e.stack : String(e)}`);
      }
      if ((done + 1) % checkEvery === 0 || done + 1 === count) {
        await target.check().catch((e: unknown) => failures.push(`check after ${done + 1} inputs: ${String(e)}`));
      }
      if ((done + 1) % 10_000 === 0) progress?.(done + 1);
    }
  } finally {
    await target.close();
    process.off('unhandledRejection', unhandled);
  }
  return { target: target.name, inputs: done, seconds: (performance.now() - started) / 1000, failures };
}

async function main(argv: string[]): Promise<number> {
  let count = 1_000_000;
  let seed = Date.now() >>> 0;
  let only: string | undefined;
  let checkEvery = 100;
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (v === undefined) break;
    if (argv[i] === '--count') count = Number(v);
    else if (argv[i] === '--seed') seed = Number(v);
    else if (argv[i] === '--target') only = v;
    else if (argv[i] === '--check-every') checkEvery = Number(v);
    else continue;
    i++;
  }
  let failed = false;
  for (const make of ALL_TARGETS) {
    const name = make().name;
    if (only !== undefined && name !== only) continue;
    const r = await fuzz(make, count, seed, checkEvery, (done) => {
      if (process.stderr.isTTY) process.stderr.write(`\r${name}: ${done} inputs`);
    });
    if (process.stderr.isTTY) process.stderr.write('\n');
    console.log(`${r.target}: ${r.inputs} inputs in ${r.seconds.toFixed(1)} s (seed ${seed}, checks every ${checkEvery}), ${r.failures.length === 0 ? 'no failure' : 'FAILED'}`);
    for (const f of r.failures) console.log(`  ${f}`);
    failed ||= r.failures.length > 0;
  }
  return failed ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then((status) => process.exit(status));
}
