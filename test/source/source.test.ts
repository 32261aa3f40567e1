import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { parseEndpoint, parseGroup } from '../../src/net/address.js';
import { SocketError } from '../../src/net/errors.js';
import type { SenderSocket } from '../../src/net/udp.js';
import { decodePacket, PacketType, SessionKind } from '../../src/protocol/packet.js';
import { dataPayloadBytesMax } from '../../src/protocol/sizes.js';
import { SourceSettingsError } from '../../src/source/errors.js';
import {
  inputEnded,
  inputNotReady,
  openRelayInput,
  openTickerInput,
  type PayloadInput,
  tickerQuoteBytesMax,
} from '../../src/source/inputs.js';
import { createSource, type SourceSettings } from '../../src/source/source.js';
import { freshPort } from '../helpers/loopback.js';

const settings: SourceSettings = {
  group: parseGroup('239.255.64.1:5000', 'g'),
  rateBitsPerSecond: 0,
  packetPayloadBytes: 100,
  sessionName: 'test',
  startDelayMs: 0,
};

/** An input of the given payload lengths, then its end; records whether it was closed. */
function lengthsInput(lengths: number[]): PayloadInput & { closed: boolean } {
  let next = 0;
  return {
    kind: SessionKind.stream,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    closed: false,
    read(out) {
      const length = lengths[next++];
      if (length === undefined) {
        return inputEnded;
      }
      out.fill(0x61, 0, length);
      return length;
    },
    waitReadable: () => Promise.resolve(),
    async close() {
      this.closed = true;
    },
  };
}

/** A socket whose every send fails with the given code, as a local nftables drop makes them (EPERM). */
function refusingSocket(code: string): SenderSocket & { sends: number; closed: boolean } {
  return {
    iface: undefined,
    sends: 0,
    closed: false,
    send(_buffer, _length, done) {
      this.sends++;
      const error = Object.assign(new Error(`send ${code}`), { code });
      setImmediate(() => done?.(error));
    },
    async close() {
      this.closed = true;
    },
    async [Symbol.asyncDispose]() {},
  };
}

/** A socket that keeps every datagram it is given. */
function recordingSocket(): SenderSocket & { datagrams: Buffer[] } {
  const datagrams: Buffer[] = [];
  return {
    iface: undefined,
    datagrams,
    send(buffer, length, done) {
      datagrams.push(Buffer.from(buffer.subarray(0, length)));
      setImmediate(() => done?.(null));
    },
    async close() {},
    async [Symbol.asyncDispose]() {},
  };
}

describe('a source tells the truth about datagrams that did not leave (send exited 0 with 108 send errors)', () => {
  it('counts every failed send by its code and tells the event sink', async () => {
    const socket = refusingSocket('EPERM');
    const told: Error[] = [];
    const source = createSource(settings, {
      input: lengthsInput([100, 100, 100]),
      openSocket: async () => socket,
      onSendError: (error) => told.push(error),
    });
    const stats = await source.run();
    assert.equal(stats.packetsSent, 3);
    assert.equal(stats.datagramsAttempted, socket.sends);
    assert.equal(stats.sendErrors, socket.sends);
    assert.deepEqual(stats.sendErrorCodes, { EPERM: socket.sends });
    assert.equal(told.length, socket.sends);
    assert.ok(socket.closed);
  });
});

describe('a source that cannot open its socket fails at once and closes its input (send hung with no route)', () => {
  it('rejects with the socket error, closes the input, leaves no timer', async () => {
    const input = lengthsInput([100]);
    const source = createSource(settings, {
      input,
      openSocket: async () => {
        throw new SocketError('connect 239.255.64.1:5000: ENETUNREACH (no route to the group)');
      },
    });
    await assert.rejects(source.run(), /ENETUNREACH/);
    assert.ok(input.closed);
  });
});

describe('size budget: a payload whose REPAIR would not fit is refused before any I/O', () => {
  it('refuses more than dataPayloadBytesMax, accepts exactly that', () => {
    const input = lengthsInput([]);
    assert.throws(
      () => createSource({ ...settings, packetPayloadBytes: dataPayloadBytesMax + 1 }, { input }),
      (error: unknown) =>
        error instanceof SourceSettingsError &&
        new RegExp(`the maximum is ${dataPayloadBytesMax}`).test(error.message),
    );
    assert.doesNotThrow(() =>
      createSource({ ...settings, packetPayloadBytes: dataPayloadBytesMax }, { input }),
    );
  });

  it('refuses a session name no descriptor can carry, with a typed error (not an encode error in a timer)', () => {
    assert.throws(
      () => createSource({ ...settings, sessionName: 'x'.repeat(300) }, { input: lengthsInput([]) }),
      SourceSettingsError,
    );
  });
});

describe('owned timers: close() stops a run and nothing is sent after it', () => {
  it('a closed source sends nothing more', async () => {
    const socket = recordingSocket();
    const never: PayloadInput = {
      ...lengthsInput([]),
      read: () => inputNotReady,
      waitReadable: () => new Promise(() => undefined),
    };
    const source = createSource(
      { ...settings, startDelayMs: 300 },
      { input: never, openSocket: async () => socket },
    );
    const running = source.run();
    await new Promise((resolve) => setTimeout(resolve, 50));
    await source.close();
    await running;
    const count = socket.datagrams.length;
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(socket.datagrams.length, count);
  });

  it('a closed ticker resolves its pending wait at once', async () => {
    const ticker = openTickerInput({ ticksPerSecond: 1, tickCount: 3 });
    assert.ok(ticker.read(Buffer.alloc(200)) > 0);
    const waiting = ticker.waitReadable();
    const startedMs = performance.now();
    await ticker.close();
    await waiting;
    assert.ok(performance.now() - startedMs < 500);
  });
});

describe('zero-length payloads are legal: relayed, not lost (relayed empty datagrams vanished uncounted)', () => {
  it('an empty payload from the input becomes an empty DATA packet, counted', async () => {
    const socket = recordingSocket();
    const source = createSource(settings, { input: lengthsInput([0, 5, 0]), openSocket: async () => socket });
    const stats = await source.run();
    assert.equal(stats.packetsSent, 3);
    assert.equal(stats.packetsEmpty, 2);
    const lengths = socket.datagrams
      .map((datagram) => decodePacket(datagram))
      .flatMap((decoded) =>
        decoded.ok && decoded.value.type === PacketType.data ? [decoded.value.payload.length] : [],
      );
    assert.deepEqual(lengths, [0, 5, 0]);
  });

  it('the relay input passes an empty datagram and drops (and counts) one larger than a packet', async () => {
    const endpoint = parseEndpoint(`127.0.0.1:${freshPort()}`, '--relay');
    const relay = await openRelayInput(endpoint, { payloadBytesMax: 10 });
    const client = createSocket('udp4');
    try {
      for (const datagram of [Buffer.alloc(0), Buffer.alloc(11), Buffer.from('abc')]) {
        await new Promise<void>((resolve, reject) =>
          client.send(datagram, endpoint.port, endpoint.address, (error) =>
            error ? reject(error) : resolve(),
          ),
        );
      }
      const out = Buffer.alloc(10);
      const lengths: number[] = [];
      while (lengths.length < 2) {
        const length = relay.read(out);
        if (length === inputNotReady) {
          await relay.waitReadable();
          continue;
        }
        lengths.push(length);
      }
      assert.deepEqual(lengths, [0, 3]);
      assert.equal(relay.droppedCount, 1);
      assert.equal(relay.droppedTooLargeCount, 1);
    } finally {
      client.close();
      await relay.close();
    }
  });

  it('the relay input never takes more than a REPAIR can carry, whatever it is asked', async () => {
    const endpoint = parseEndpoint(`127.0.0.1:${freshPort()}`, '--relay');
    const relay = await openRelayInput(endpoint, { payloadBytesMax: 1_000_000 });
    const client = createSocket('udp4');
    try {
      for (const datagram of [Buffer.alloc(dataPayloadBytesMax + 1), Buffer.alloc(dataPayloadBytesMax)]) {
        await new Promise<void>((resolve, reject) =>
          client.send(datagram, endpoint.port, endpoint.address, (error) =>
            error ? reject(error) : resolve(),
          ),
        );
      }
      const out = Buffer.alloc(dataPayloadBytesMax);
      let length = relay.read(out);
      while (length === inputNotReady) {
        await relay.waitReadable();
        length = relay.read(out);
      }
      assert.equal(length, dataPayloadBytesMax);
      assert.equal(relay.droppedTooLargeCount, 1);
    } finally {
      client.close();
      await relay.close();
    }
  });
});

describe('a stop ends a slowly paced source at once (send --rate 1 ignored SIGTERM while it waited for its next packet)', () => {
  it('an abort during a pacing wait of hours sends END and resolves within a second', async () => {
    // At 1 kbit/s a 132-byte slot is a packet about every second; at --rate 1 one every 17 min:
    // the stop must not wait for the next packet's turn.
    const socket = recordingSocket();
    const source = createSource(
      { ...settings, rateBitsPerSecond: 1 },
      { input: lengthsInput([100, 100, 100]), openSocket: async () => socket },
    );
    const controller = new AbortController();
    const running = source.run({ signal: controller.signal });
    const deadline = performance.now() + 5_000;
    while (!socket.datagrams.some((d) => d[3] === PacketType.data) && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const startedMs = performance.now();
    controller.abort();
    let timer: NodeJS.Timeout | undefined;
    const stats = await Promise.race([
      running,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), 2_000);
      }),
    ]);
    clearTimeout(timer);
    if (stats === undefined) {
      await source.close(); // ends the wait, so the test leaves nothing behind
      await running;
      assert.fail('the source was still waiting for its next packet 2 s after the stop');
    }
    assert.ok(
      performance.now() - startedMs < 1_000,
      `the stop took ${Math.round(performance.now() - startedMs)} ms`,
    );
    assert.equal(stats.packetsSent, 1);
    assert.ok(
      socket.datagrams.some((d) => d[3] === PacketType.end),
      'END was sent',
    );
  });
});

describe('the ticker never cuts a quote (a 16-byte packet carried the first 16 bytes of each, and receive said whole)', () => {
  it('a quote fits a packet of tickerQuoteBytesMax; a smaller packet that cannot hold it is an error, not a cut quote', () => {
    const ticker = openTickerInput({ ticksPerSecond: 100_000, tickCount: 3 });
    const packet = Buffer.alloc(tickerQuoteBytesMax);
    const length = ticker.read(packet);
    assert.ok(typeof length === 'number' && length > 0 && length <= tickerQuoteBytesMax);
    assert.match(
      packet.subarray(0, length as number).toString('latin1'),
      /^1 GCST \d+\.\d{2} [+-]\d\.\d{2} \S+Z\n$/,
    );
    assert.throws(
      () => ticker.read(Buffer.alloc(16)),
      /a ticker quote of \d+ bytes does not fit a 16-byte packet/,
    );
  });
});
