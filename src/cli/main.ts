/**
 * The gatecast command: parses the subcommand, runs it, and maps errors to exit codes. Operating
 * errors print one line naming the value and exit 2; a bug prints its stack and exits 70.
 *
 * Each command's module is imported only when that command runs: the subscription server and the
 * repair controller load Fastify and the stores (about 0.3 s), which `--help`, `send` or
 * `retransmit` should not pay for at start-up.
 */
import { readFileSync } from 'node:fs';
import { exitInternal, exitOk, exitUsage, isOperatingError } from './errors.js';

const usage = `usage: gatecast <command> [options]

gatecast turns IP multicast into a service: repaired, restricted, billed, orderable.

commands:
  send       multicast a file, standard input, a ticker, or a relayed UDP stream
  receive    receive a session, write it in order, report loss truthfully
  retransmit buffer sessions inside the network and answer NACKs
  repair     repair a session near its receivers, re-emit it whole on a new group
  agent      hand a repaired session to local applications as if it came on S1
  serve      the subscription server and ledger (HTTP+JSON, SQLite or PostgreSQL)
  admin      the operator's command line: parties, grants, sessions, rates, balances, invoices, orders
  stb        a set-top box: order, renew, cancel or list channel orders over the return network
  token      keys, tokens (software or PKCS#11) and grants for restricted sessions
  daemon     run any mix of roles in one process from a YAML file (gatecast daemon --config gatecast.yaml)
  demo       run a sender and receivers over loopback and print a summary
  help       show this text (gatecast <command> --help for a command's options)
  version    print the version

exit codes: 0 ok, 1 session incomplete (send: datagrams did not leave), 2 bad usage or input, 70 internal error

environment:
  GATECAST_AEAD_ENGINE       openssl-evp or node:crypto: what seals and opens restricted packets (default: the addon when built)
  GATECAST_SIGNATURE_ENGINE  libsodium or node:crypto: what makes and checks Ed25519 signatures (default: libsodium when found)
`;

function version(): string {
  const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return packageJson.version;
}

/** Runs the command line; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if ((process.env.GATECAST_AEAD_ENGINE ?? '') !== '') {
      // A packet engine that cannot be followed is refused before anything starts (exit 2).
      (await import('../crypto/aead-engine.js')).aeadEngine();
    }
    if ((process.env.GATECAST_SIGNATURE_ENGINE ?? '') !== '') {
      // So is a signature engine (src/crypto/aead-engine.ts, signatureEngineInfo).
      (await import('../crypto/aead-engine.js')).signatureEngineInfo();
    }
    switch (command) {
      case 'send':
        return await (await import('./send.js')).runSend(rest, process.stderr);
      case 'receive':
        return await (await import('./receive.js')).runReceive(rest, process.stderr);
      case 'retransmit':
        return await (await import('./servers.js')).runRetransmit(rest, process.stderr);
      case 'repair':
        return await (await import('./servers.js')).runRepair(rest, process.stderr);
      case 'agent':
        return await (await import('./servers.js')).runAgent(rest, process.stderr);
      case 'serve':
        return await (await import('./serve.js')).runServe(rest, process.stderr);
      case 'admin':
        return await (await import('./admin.js')).runAdmin(rest, process.stdout);
      case 'stb':
        return await (await import('./stb.js')).runStb(rest, process.stderr);
      case 'token':
        return await (await import('./token-command.js')).runToken(rest, process.stdout);
      case 'daemon':
        return await (await import('./daemon-command.js')).runDaemonCommand(rest, process.stderr);
      case 'demo':
        return await (await import('./demo.js')).runDemo(rest, process.stdout);
      case 'version':
      case '--version':
        process.stdout.write(`gatecast ${version()}\n`);
        return exitOk;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(usage);
        return command === undefined ? exitUsage : exitOk;
      default:
        process.stderr.write(`gatecast: unknown command "${command}"\n\n${usage}`);
        return exitUsage;
    }
  } catch (error) {
    if (isOperatingError(error)) {
      process.stderr.write(`gatecast ${command}: ${error.message}\n`);
      return exitUsage;
    }
    process.stderr.write(
      `gatecast ${command}: internal error: ${(error as Error)?.stack ?? String(error)}\n`,
    );
    return exitInternal;
  }
}
