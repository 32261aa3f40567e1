/**
 * The gatecast command as it ran before it was built at install: the TypeScript sources compiled
 * by tsx when the command starts. The start-up benchmark's baseline; run it with
 * `node --import tsx bench/startup-from-source.ts ARGS…`.
 */
import { main } from '../src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
