/**
 * Every bound gatecast keeps, in one place. Names are noun-first with the unit last; each one is
 * listed in docs/limits.md.
 */

/** Largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP). */
export const datagramBytesMax = 65_507;

/** Default DATA payload size: 1400 bytes keeps a packet under a 1500-byte MTU over IPv6 too. */
export const packetPayloadBytesDefault = 1400;

/** Smallest DATA payload size a source accepts for --packet-size. */
export const packetPayloadBytesMin = 16;

/** Longest session name in a DESCRIPTOR, in UTF-8 bytes. */
export const sessionNameBytesMax = 255;

/**
 * How often a source repeats its DESCRIPTOR so that late joiners learn the session: a receiver
 * writes nothing before it has one, so this interval is what a joiner of a plain live stream waits
 * at worst (docs/benchmarks.md, join to first decoded packet: at 1000 ms its p99 was 974 ms). A
 * DESCRIPTOR is 89 bytes plus the name, about 400 B/s at 250 ms. Not shorter for a plain session:
 * every 50 ms it took a fifth of an edge that passes 100 datagrams a second, and there the
 * adaptive-rate test lost every copy of END in 3 runs of 3 (a signed or restricted run repeats its
 * DESCRIPTOR with its keys every protectedControlIntervalMs).
 */
export const descriptorIntervalMs = 250;

/** How often a source sends a HEARTBEAT carrying the next sequence (makes tail loss visible). */
export const heartbeatIntervalMs = 250;

/** Pause between a source's first DESCRIPTOR and its first DATA (routers install state meanwhile). */
export const startDelayMsDefault = 200;

/** How many times a source sends END, and the gap between the copies. */
export const endRepeatCount = 4;
export const endRepeatIntervalMs = 50;

/** How many times the subscription server sends each SETUP, and the gap between the copies. */
export const setupRepeatCount = 3;
export const setupRepeatIntervalMs = 50;

/** Default sending rate of a source when --rate is not given. */
export const rateBitsPerSecondDefault = 10_000_000;

/** Largest rate a source accepts (10 Gbit/s). */
export const rateBitsPerSecondMax = 10_000_000_000;

/** Datagrams a source sends back to back before it yields to the event loop. */
export const sendBatchPacketsMax = 64;

/** Packets a receiver holds out of order before it declares the oldest gap lost. */
export const reorderPacketsMax = 8192;

/** Bytes a receiver holds out of order (65 KB datagrams must not grow it without bound). */
export const reorderBytesMax = 64 * 1024 * 1024;

/** Packets and bytes a receiver or repair server holds, over every run, before a DESCRIPTOR says which run to take. */
export const pendingPacketsMax = 32_768;
export const pendingBytesMax = 64 * 1024 * 1024;

/** Runs whose early DATA is held before their DESCRIPTOR; DATA of a further run is dropped. */
export const pendingRunsMax = 8;

/** How far beyond the highest DATA received a HEARTBEAT or END may move a run's known end. */
export const progressAheadPacketsMax = 8192;

/** DATA packets beyond the window, in a row, that make a window jump to them (an outage longer than the window). */
export const resyncPacketsMin = 32;

/** How long DATA must keep arriving beyond the window, with none inside it, before the window jumps (a burst of forgeries does not). */
export const resyncQuietMs = 1_000;

/** A run with no DATA and no HEARTBEAT for this long has ended (its source died without END). */
export const sessionIdleMs = 5_000;

/** Repair server: runs remembered as ended, so a late or replayed DESCRIPTOR does not start one again. */
export const endedRunsMax = 256;

/** Repair server: how far back into a file it reaches when it joins late; earlier packets are reported as not reached. */
export const repairReachBackPacketsMax = 16_384;

/** Default socket receive buffer. */
export const receiveBufferBytesDefault = 4 * 1024 * 1024;

/** Default socket send buffer. */
export const sendBufferBytesDefault = 4 * 1024 * 1024;

/** Smallest socket buffer `--socket-buffer` accepts: below it a burst of 64 datagrams overflows. */
export const socketBufferBytesMin = 64 * 1024;

/** Largest socket buffer `--socket-buffer` accepts. */
export const socketBufferBytesMax = 1024 * 1024 * 1024;

/** Socket buffer grants a process remembers for its report (the most recent ones). */
export const socketBufferGrantsMax = 64;

/** How long a receiver waits after END for reordered packets before counting the rest missing. */
export const endGraceMsDefault = 300;

/** Packet buffers a source keeps in flight; a buffer is reused only after the kernel took it. */
export const sendRingPacketsMax = 512;

/** Bytes a file source reads at a time. */
export const fileReadBlockBytes = 256 * 1024;

/** Payloads a file sink gathers before one writev. */
export const fileWriteBatchPayloadsMax = 256;

/** Default receiver silence timeout. */
export const receiveTimeoutMsDefault = 30_000;

/** Datagrams a relay source queues when the network is slower than its input. */
export const relayQueuePacketsMax = 16_384;

/** Slots of the timer wheel and the duration of one slot. */
export const timerWheelSlotCount = 512;
export const timerWheelTickMs = 1;

/** Default multicast TTL / hop limit: above 1 so the session crosses a router. */
export const multicastTtlDefault = 16;

/** Ranges one NACK may carry, and packets one range may ask for. */
export const nackRangesMax = 128;
export const nackRangePacketsMax = 4096;

/** Sessions one ANNOUNCE, QUALITY or retransmit server may carry or hold. */
export const announceSessionsMax = 64;

/** Authenticated peers whose replay windows a server keeps; the least recent is forgotten first. */
export const replayPeersMax = 1024;

/**
 * Counters a replay window remembers (a multiple of 32; one window per sender and path), and how
 * far from our wall clock a control message's timestamp may be.
 */
export const replayWindowCountersMax = 1024;
export const replayFreshnessMs = 30_000;

/** Retransmit server: groups it joins (configured and by SETUP); a SETUP join beyond is refused and counted. */
export const retransmitGroupsMax = 4096;

/** Retransmit server: runs buffered per group (a restarted source is a new run); the idlest goes first. */
export const retransmitRunsPerGroupMax = 4;

/**
 * How long a peer's learned sender id is used as the target of what we send it without hearing
 * from it; after that we write target 0, so a peer that restarted (a new id) still takes the
 * message and teaches us its new id (docs/protocol.md, "Freshness, replay and binding").
 */
export const controlPeerSilenceMsMax = 3_000;

/** Retransmit server: default buffer bounds per session. */
export const retransmitBufferBytesDefault = 256 * 1024 * 1024;
export const retransmitBufferAgeMsDefault = 60_000;

/** Retransmit server: default repair rate per authenticated repair server. */
export const repairRateBitsPerSecondDefault = 200_000_000;

/**
 * Answering NACKs (retransmit server and source of last resort, docs/architecture.md, "Pacing
 * repairs"): answers to one requester leave paced, in bursts of at most repairAnswerBurstMs of the
 * rate (at least repairAnswerBurstPacketsMin datagrams), from a queue of at most
 * repairAnswerQueuePacketsMax; a sequence queued or answered to that requester within
 * repairAnswerRecentMs is not answered again (its answer is on the way). At most
 * repairAnswerRequestersMax requesters and repairAnswerRememberedMax answers each are remembered.
 */
export const repairAnswerBurstMs = 10;
export const repairAnswerBurstPacketsMin = 2;
export const repairAnswerQueuePacketsMax = 8192;
export const repairAnswerRecentMs = 200;
export const repairAnswerRequestersMax = 1024;
export const repairAnswerRememberedMax = 65_536;

/**
 * Retransmit server, peer fetch (docs/protocol.md, "Peer fetch"): how long it waits for one peer
 * before asking the next, fetches in flight at once (past them a NACK is answered at once), peers
 * asked per fetch, how long a sequence no peer held is not asked for again, how many such
 * sequences it remembers, and peers it learns from QUALITY and ANNOUNCE besides those configured.
 */
export const peerFetchTimeoutMs = 50;
export const peerFetchesMax = 64;
export const peerFetchPeersMax = 4;
export const peerFetchMissMs = 500;
export const peerFetchMissesMax = 65_536;
export const retransmitPeersLearnedMax = 16;
/**
 * Retransmit server: peers' QUALITY reports kept for the election, one per peer and run (the
 * oldest forgotten first), and periods after which a report not heard again is forgotten: every
 * restart of a source is a new run, so without them the reports grew for the server's life.
 */
export const electionReportsMax = 65_536;
export const electionReportForgetPeriods = 60;

/**
 * A source of last resort (`send --retransmit-listen`): after END it stays until no NACK has come
 * for lastResortQuietMs, and at most lastResortLingerMsMaxDefault (`--linger`); it keeps at most
 * lastResortBufferBytesDefault of the session unless told otherwise (`--buffer-bytes`).
 */
export const lastResortQuietMs = 2_000;
export const lastResortLingerMsMaxDefault = 60_000;
export const lastResortBufferBytesDefault = 256 * 1024 * 1024;

/**
 * Adaptive rate (`send --adapt-rate`, src/source/adaptive-rate.ts): a repair server sends FEEDBACK
 * on its run every adaptFeedbackIntervalMs to the sources of last resort it knows. The source cuts
 * its rate by adaptRateDecreaseFactor on a report of trouble (at most once per
 * adaptRateDecreaseHoldMs), and while no trouble was reported for that long climbs back by
 * adaptRateIncreaseStepFraction of the ceiling every adaptRateIncreaseIntervalMs. Trouble: a packet
 * given up, a kernel drop on the server's S1 socket, at least adaptBacklogPacketsHigh gaps being
 * repaired, more than adaptBacklogPacketsLow and adaptBacklogGrowthPacketsMin more than the
 * server's previous report, adaptHoldingPacketsHigh packets held behind a gap, or at least
 * adaptNackedPacketsMin packets NACKed since its previous report and more than it received; a climb waits while a server heard
 * within adaptReportStaleMs has more than adaptBacklogPacketsLow gaps. The floor defaults to
 * adaptRateFloorFractionDefault of the ceiling; at most adaptReportersMax servers are remembered.
 */
export const adaptFeedbackIntervalMs = 200;
export const adaptRateDecreaseFactor = 0.7;
export const adaptRateDecreaseHoldMs = 400;
export const adaptRateIncreaseIntervalMs = 100;
export const adaptRateIncreaseStepFraction = 0.025;
export const adaptBacklogPacketsHigh = 2048;
export const adaptBacklogPacketsLow = 512;
export const adaptBacklogGrowthPacketsMin = 128;
export const adaptNackedPacketsMin = 64;
export const adaptHoldingPacketsHigh = 16_384;
export const adaptReportStaleMs = 2_000;
export const adaptReportersMax = 64;
export const adaptRateFloorFractionDefault = 0.05;
/** Repair server: sources of last resort it sends FEEDBACK to, at most. */
export const feedbackTargetsMax = 8;

/** How often retransmit servers announce themselves and report their quality. */
export const announceIntervalMsDefault = 1000;

/** Repair server: largest random delay before a gap is NACKed (spreads NACKs of many servers). */
export const nackDelayMsMaxDefault = 2;

/** Repair server: first NACK timeout before a retransmit server's round trip is measured. */
export const nackTimeoutMsInitial = 50;

/** Repair server: bounds of the adaptive NACK timeout. */
export const nackTimeoutMsMin = 20;
export const nackTimeoutMsMax = 4000;

/**
 * Repair server: packets a run may have NACKed to one retransmit server and not yet had answered
 * (its NACK window, src/repair/nack-scheduler.ts): it starts at the initial size, opens by one per
 * answer and halves on a timeout, within the bounds. A retransmit server answers at most a burst
 * of its repair rate at once and drops the rest, so asking for thousands of packets in one round
 * trip only makes them time out.
 */
export const nackWindowPacketsInitial = 64;
export const nackWindowPacketsMin = 8;
export const nackWindowPacketsMax = 1024;

/**
 * Repair server: a NACK window halves on a timeout only while the share of its recent NACKed
 * packets that timed out is above nackWindowTimeoutShareMax. The share is a moving average over
 * answers and timeouts, each weighing nackWindowOutcomeWeight. Random loss of answers at a lossy
 * edge (10–20 %) stays below it, so the window is not held at its minimum by loss that asking for
 * fewer packets does not cut; a server that drops what it is asked (over its rate) or is gone
 * passes it within a window of timeouts.
 */
export const nackWindowTimeoutShareMax = 0.5;
export const nackWindowOutcomeWeight = 1 / 32;

/**
 * Repair server: when a run it has no END for has sent nothing on S1 for tailQuietMs, it asks a
 * retransmit server, every tailProbeIntervalMs (at most once per NACK timeout), whether the run
 * goes on after its S1 frontier: the sequences 0, 1, 3, 7 … 2^k - 1 after it up to
 * tailProbePacketsMax, and around the last one an ANNOUNCE said is held — since the tail of the
 * run and its END may all have been lost on S1 while the retransmit servers hold them.
 */
export const tailQuietMs = 500;
export const tailProbeIntervalMs = 250;
export const tailProbePacketsMax = 4096;

/** Repair server: first wait before asking again when every server said "not held". */
export const notHeldRetryMsInitial = 5;

/**
 * Repair server: how long a missing packet may wait on servers that are alive but slow before their
 * silence, or "not held" from one not shown to be past the packet (it may be behind in reading its
 * sessions), counts toward giving up (nackAttemptsMax).
 */
export const liveServerWaitMsMax = 30_000;

/**
 * Reliable repair server: how long "not held" from a live server not shown to be past the packet
 * is taken as "not yet". A server that has not read a packet this long after the gap was found has
 * lost it (no socket buffer holds S1 that long): past it, the answer counts like a proven one, so
 * a run whose END came is not held open for ever by a packet no server will get.
 */
export const reliableNotHeldWaitMsMax = 120_000;

/**
 * Repair server: packets NACKed per second are bounded by what arrives (docs/architecture.md,
 * "Pacing repairs"): at most nackPacketsPerArrival for each datagram (DATA or REPAIR) that arrived
 * over the last second, plus nackPacketsPerSecondMin, in bursts of at most nackBudgetBurstMs of it;
 * a due gap past the budget waits its turn, in the order gaps fell due, for a flush at least
 * nackBudgetRetryMs later.
 */
export const nackPacketsPerArrival = 2;
export const nackPacketsPerSecondMin = 100;
export const nackBudgetBurstMs = 250;
export const nackBudgetRetryMs = 10;

/** Repair server: NACKs per missing packet before it is declared unrecoverable. */
export const nackAttemptsMax = 10;

/**
 * Repair server: re-emission on S2 is paced (src/repair/reorder-emitter.ts), so that packets held
 * behind a gap, released together when it fills, do not overrun the receivers' sockets: at most
 * s2PaceArrivalFactor times the highest rate datagrams arrived at for the run (over a second; the
 * receivers took S1 at that rate), and at least s2PacePacketsPerSecondMin, in bursts of at most
 * s2PaceBurstPackets.
 */
export const s2PaceArrivalFactor = 1.5;
export const s2PacePacketsPerSecondMin = 2000;
export const s2PaceBurstPackets = 64;

/** Repair server: packets and bytes held for in-order re-emission; past them the oldest gap is given up. */
export const repairHoldPacketsMax = 65_536;
export const repairHoldBytesMax = 128 * 1024 * 1024;

/** Retransmit server with a repair group: a sequence repaired by multicast is not sent again
 * within this window (the other repair servers behind the same loss got it too). */
export const repairSuppressMs = 50;

/**
 * Retransmit server with a repair group: how long a sequence repaired by multicast is remembered,
 * and a first request for it (a NACK without the again flag) taken as crossed with that multicast:
 * a repair server behind in reading S1 asked before it read the REPAIR already in its socket.
 */
export const repairMulticastRecentMs = 3000;

/** Retransmit server with a repair group: sequences remembered as multicast lately (oldest forgotten first). */
export const repairMulticastRememberedMax = 65_536;

/** Repair controller: how long a grant lasts unless the agent renews it (`--lease`). */
export const controllerLeaseMsDefault = 60_000;

/** Repair controller: how often repaired bytes are reported as usage (`--report-interval`). */
export const controllerReportIntervalMsDefault = 60_000;

/** Repair controller: how long a repair module with no subscriber left stays up. */
export const controllerIdleMs = 10_000;

/** Repair controller: S2 groups handed out from `--s2-pool` when it names no count. */
export const controllerPoolSizeDefault = 256;

/** Agent: after the controller refuses, how long before it asks again (a re-join asks at once). */
export const agentRefusalRetryMs = 30_000;

/**
 * Agent on a sealed S2: envelopes of an epoch whose key it lacks yet, held (in packets and bytes)
 * while it asks the controller for the new key; past them the oldest is dropped and counted.
 */
export const agentKeyWaitPacketsMax = 32_768;
export const agentKeyWaitBytesMax = 64 * 1024 * 1024;

/** Agent on a sealed S2: asks the controller for a missing epoch's key at most this often. */
export const agentKeyAskMsMin = 250;

/** Agent on a sealed S2: S2 key epochs held at once (the current one and those just before it). */
export const agentS2KeysMax = 4;

/**
 * Restricted runs (session and incarnation) an agent follows at once on one S2. A run whose keys
 * the token has not released yet (maybe forged KEY messages) is dropped first, so it never pushes
 * out one that decrypts.
 */
export const agentRestrictedRunsMax = 4;

/** Subscription server: how long a server keeps the rate card before reading it again. */
export const rateCacheMs = 1_000;

/** Store: how long a SQLite writer waits for another process's write lock. */
export const sqliteBusyTimeoutMs = 5_000;

/** Source buying repair: pause after registering, so the retransmit servers join before DATA. */
export const setupSettleMs = 500;

/** Subscription server: how often SETUP join is sent again for open sessions that bought repair. */
export const setupRefreshMsDefault = 30_000;

/** HTTP servers: a request's headers and body must arrive within this (slow bodies are cut). */
export const httpRequestTimeoutMs = 10_000;

/** HTTP servers: how long an idle keep-alive connection stays open. */
export const httpKeepAliveTimeoutMs = 5_000;

/** HTTP servers: how often open connections are checked against the request timeout. */
export const httpConnectionsCheckIntervalMs = 1_000;

/** HTTP servers: open connections at once; more are closed as they arrive (kept below the fd limit). */
export const httpConnectionsMax = 512;

/** Subscription server: largest request body. */
export const subscriptionBodyBytesMax = 16 * 1024;

/** Repair controller: largest request body. */
export const controllerBodyBytesMax = 4096;

/**
 * HTTP clients of gatecast's APIs: largest answer read; past it the stream is cancelled and the
 * answer refused as `invalid-answer` (a server that streams without end is not held in memory).
 */
export const apiAnswerBytesMax = 16 * 1024 * 1024;

/** Repair controller: S1 sessions one subscriber may hold grants for at once. */
export const controllerGrantsPerSubscriberMax = 8;

/** Files gatecast reads (secrets, tokens): largest size accepted. */
export const secretFileBytesMax = 64 * 1024;

/** A --config file: largest size read; it must be a regular file. */
export const configFileBytesMax = 1024 * 1024;

/** The repair controller's usage journal: largest size read on start. */
export const journalBytesMax = 64 * 1024 * 1024;

/**
 * Ledger: an account's total debits and its total credits each stay at or below this (2^53 - 1
 * minor units), so every balance, invoice and sum is exact as a JSON number. A transfer past it is
 * refused when it is written.
 */
export const ledgerAccountTotalMax = Number.MAX_SAFE_INTEGER;

/**
 * Ledger: attempts at writing one batch of transfers, each in its own transaction, when another
 * writer took one of its keys, moved an account's totals after they were read, or deadlocked
 * with it; the last failure is then the batch's error.
 */
export const ledgerBatchAttemptsMax = 8;

/** Shutdown: how long a stopping command waits for its roles to close before it exits anyway. */
export const shutdownGraceMs = 5_000;

/**
 * Shutdown of `gatecast daemon`: the budget from SIGTERM to exit for all its roles together (the
 * roles close within it; the process exits 0 at its end whatever still holds the event loop).
 */
export const daemonStopMs = 1_900;

/** Store (SQLite): prepared statements kept for reuse, by SQL text (the least recently used go). */
export const sqliteStatementsKept = 256;

/** Subscription server: usage events in one batch request (POST /v1/usage/batch). */
export const usageBatchEventsMax = 1000;

/**
 * Subscription server: usage events in one group commit, the transaction that concurrent
 * POST /v1/usage and POST /v1/usage/batch requests share (a batch is never split over two).
 */
export const usageGroupCommitEventsMax = 4000;

/** Subscription server: largest body of POST /v1/usage/batch. */
export const usageBatchBodyBytesMax = 512 * 1024;

/** Order server: how long an order lasts without a renewal (a box renews well before). */
export const orderLeaseMsDefault = 60_000;

/** Order server: how often leases that ran out are ended. */
export const orderExpirySweepMs = 1_000;
/** Orders one GET /v1/order/orders answers without a `limit`, and the most it answers with one. */
export const orderListRowsDefault = 1_000;
export const orderListRowsMax = 10_000;

/** Order server: how often a router driver checks its link's version in the store. */
export const orderDriverPollMs = 100;

/** Order server: how often a router driver compares the router with the store even without a change. */
export const orderDriftCheckMs = 1_000;

/**
 * Order server: a link whose router keeps failing with the same errors reports them again only
 * after this long (it is asked again after a poll's wait, doubled up to a drift check's).
 */
export const orderRouterErrorRepeatMs = 30_000;

/** Order server: how long a router driver's election lease lasts without a refresh. */
export const orderDriverLeaseMs = 5_000;

/** Order server: how often unbilled orders are charged (retrying what failed). */
export const orderBillingSweepMs = 2_000;

/**
 * Order server: orders (or cancels and expiries) in one group commit, the batch that requests
 * arriving together are decided in (one transaction, a few statements, one hold of each link's lock).
 */
export const orderGroupCommitMax = 256;

/** Order server: how long one command to smcrouted (over its control socket) may take. */
export const smcrouteCommandTimeoutMs = 5_000;

/** Order server: the longest answer read from smcrouted (its route table, for `show routes`). */
export const smcrouteReplyBytesMax = 4 * 1024 * 1024;

/** Order server: how long one `nft` command of an nftables link (a listing or a write) may take. */
export const nftCommandTimeoutMs = 5_000;

/** Order server: the longest listing read from `nft -j list table` (an nftables link's table). */
export const nftListBytesMax = 16 * 1024 * 1024;

/** Order server: largest request body. */
export const orderBodyBytesMax = 8 * 1024;
/**
 * Token: how far a KEY message's authenticated time may fall behind the latest one the token
 * accepted (KEY messages repeat and may be reordered); anything older is refused as a rollback.
 */
export const keyTimeRollbackToleranceMs = 5_000;

/**
 * Token: how far the rollback counter moves in memory before it is written to the token's storage
 * (a crash loses less than this; below keyTimeRollbackToleranceMs, so a restart still refuses what
 * it refused before, give or take the tolerance).
 */
export const tokenCounterWriteStepMs = 2_000;

/** Token: traffic keys remembered per (run, key epoch) so a repeated KEY message is not charged twice. */
export const tokenReleasedKeysMax = 64;

/** Software token: scrypt cost (N = 2^15, r = 8, p = 1; ~32 MiB and ~0.1 s per PIN check). */
export const tokenScryptCost = 32_768;

/**
 * Token: stored grants remembered as verified (root signature, this token's device), so a grant is
 * not checked again on every KEY message; past this many the memory starts again.
 */
export const tokenVerifiedGrantsKept = 256;

/** Restricted receiver: sealed DATA held while its epoch's key is on its way from the token. */
export const restrictedHeldPacketsMax = 4096;

/**
 * Restricted receiver: KEY messages of crypto-periods no DATA of their run has reached yet, kept
 * (newest) until one does, so the token is asked for (and a purse pays for) only the periods read.
 * Also the runs whose highest DATA epoch it remembers, and the KEYs that wait while the token
 * answers the first one.
 */
export const restrictedPendingKeysMax = 4;

/**
 * Repair server of a restricted run: verified KEY messages kept (the newest epochs), each sent on
 * S2 again just before the first DATA of its epoch it re-emits.
 */
export const repairKeysKeptMax = 16;

/**
 * Restricted receiver: a KEY message repeating the wrapped key of an epoch already held is asked
 * of the token again (window, tier and rollback counter checked anew) at most this often, in
 * stream time; the repeats between are counted and not asked (src/crypto/restricted-session.ts).
 */
export const restrictedKeyRecheckMs = 1000;

/**
 * Restricted or signed source: how often the DESCRIPTOR, the KEY messages, the signed offer and the
 * pending manifest go out, so a late joiner locks on, holds a key and authenticates its first DATA
 * within one interval (docs/benchmarks.md, "Restricted channels": join p99 target 250 ms).
 */
export const protectedControlIntervalMs = 50;

/**
 * Restricted or signed source: the signed offer and each KEY message are signed once and repeated
 * byte for byte at the control ticks for this long, then signed again with a fresh header (time,
 * sequence). A gate recognises such a repeat by its bytes and verifies it once, so a receiver
 * verifies these about 6 times a second rather than 60. A KEY's authenticated time lags by at most
 * this; shorter than restrictedKeyRecheckMs, so a held epoch's recheck still comes once a second.
 */
export const signedRepeatRefreshMs = 500;

/**
 * Restricted or signed source: a control tick signs the manifest collected so far only when its
 * oldest packet has waited at least this long; a younger one is completed by the packets that follow
 * or signed at the next tick, so a fast stream signs no partial manifests and a slow stream's DATA
 * waits at most protectedControlIntervalMs plus this for its manifest.
 */
export const manifestFlushWaitMs = 10;

/**
 * Signed session gate: offers and KEY messages remembered after their signature verified, to know
 * their repeats, one per run's offer or run's key epoch (a run uses three: the offer, the current and
 * the next KEY), so a retransmit server's gate over many runs of one source still knows them all.
 */
export const signedRepeatsKeptMax = 64;

/** Signed source: each manifest is sent this many times in all (once at once, then at the next control ticks). */
export const manifestSendCount = 3;

/** Signed source: manifests kept for their repeats. */
export const manifestRepeatsMax = 512;

/** Signed session gate: DATA held until a manifest vouches for it (oldest dropped first, counted). */
export const signedHeldPacketsMax = 8192;

/** Signed session gate: HEARTBEAT, END and DESCRIPTOR datagrams held until their signature arrives. */
export const signedHeldControlMax = 64;

/** Signed session gate: packet hashes remembered from verified manifests (the manifests kept longest forgotten first, each whole). */
export const signedManifestHashesMax = 65_536;

/** Signed session gate: hashes of control datagrams remembered from verified control signatures. */
export const signedVouchedControlMax = 256;

/**
 * Purse: how many revisions a token's purse state may be ahead of its monotonic counter (the state
 * is saved before the counter moves; a crash between the two leaves it one ahead).
 */
export const purseRevisionAheadMax = 1;

/** Every-n-th-packet mode: the largest group of packets one token call covers. */
export const groupKeyPacketsMax = 1024;

/**
 * Every-n-th-packet mode: group keys a receiver asks of its token a second at most (a 1 Gbit/s
 * stream of 1,400-byte packets in groups of 16 needs about 5,600; a flood of forged DATA with
 * made-up seeds costs the token no more than this).
 */
export const groupKeyAsksPerSecondMax = 8192;

/**
 * Every-n-th-packet mode: suspect group keys a receiver asks of its token a second at most (a
 * group far from the stream's, or one more than a few seeds came for): a genuine stream needs
 * them only after a long gap, and a flood of forgeries then costs the token little.
 */
export const groupKeySuspectAsksPerSecondMax = 256;

/**
 * Every-n-th-packet mode: seeds a receiver asks its token about for one group from the stream's
 * budget; any more for a group not opened yet come from the suspect budget.
 */
export const groupSeedTriesMax = 4;

/** Every-n-th-packet mode: groups of a key epoch whose keys a receiver keeps (reordered, repaired and late packets). */
export const groupKeysKept = 64;

/**
 * Every-n-th-packet mode: packets either side of the newest opened under a group key that are near
 * the stream at least, whatever the group size: in groups of 1 or 4, repairs of a burst lost some
 * seconds ago are still asked from the stream's budget.
 */
export const groupNearPacketsMin = 4096;

/** LKH: deepest member tree (2^22 slots, about 4 million members; the server keeps 4 bytes per node). */
export const lkhDepthMax = 22;

/**
 * LKH: a product's member tree depth unless its `treeDepth` says otherwise: 16,384 members, and a
 * REKEY of 29 wrapped keys (1,388 bytes) still fits one datagram on a 1,500-byte Ethernet path.
 * Deeper trees make a REKEY that IP fragments.
 */
export const memberTreeDepthDefault = 14;

/** Key server: rekey messages a source fetches with a tree (and repeats in-band), the newest. */
export const treeRekeysServedMax = 8;

/**
 * Key server: rekey messages a source fetches at most in one poll, those after the tree epoch it
 * already holds (`?since=`): every leave between two polls reaches it, not only the newest
 * treeRekeysServedMax, so members that are online never miss one.
 */
export const treeRekeysFetchedMax = 256;

/**
 * Source: how long a rekey message it learned is repeated in-band at least, even when more than
 * treeRekeysServedMax leaves came after it (a burst of revokes, or many entitlements ending at one sweep).
 */
export const treeRekeyKeptMs = 5_000;

/** Key server: how often members no entitlement covers any more are removed (a leave each). */
export const treeSweepMs = 5_000;

/** Source: how often a restricted source with --subscription fetches its product's member tree. */
export const treePollMs = 1_000;

/**
 * Source: a crypto-period's key is replaced when the tree changes only this long or longer before
 * the period starts, so that every receiver holds the replacement in time; later, the change
 * takes effect a period after.
 */
export const treeRekeyLeadMs = 600;

/** Receiver: REKEY signature checks a second at most of those that open no key of the token's path (its removal, forgeries): a flood of forged ones costs no more, and does not crowd out the genuine one. */
export const rekeyChecksPerSecondMax = 20;

/**
 * Receiver: REKEY signature checks a second at most of those that open a key of the token's path
 * under a key it holds (only genuine leaves and a member's forgeries do): as many as a source
 * fetches in one poll (treeRekeysFetchedMax), so a burst of leaves is applied within a second and no
 * member misses the next period's key (256 Ed25519 checks are about 15 ms of CPU).
 */
export const rekeyOpeningChecksPerSecondMax = 256;

/**
 * Receiver: genuine REKEYs in a row past the next one its token needs before it stops and says to
 * enroll the token again (the source repeats its last treeRekeysServedMax every half second).
 */
export const rekeyGapsFatal = 24;

/**
 * Receiver: and for at least this long of stream time (the REKEYs' timestamps) since the first of
 * them: three of the source's full repeats (treeRekeyRepeatMs), so that one REKEY lost in a burst
 * of more than rekeyGapsFatal leaves, which its next repeat brings, is not taken for one the source
 * no longer repeats.
 */
export const rekeyGapsFatalMs = 1_500;

/** Source: how often every kept rekey message is repeated in-band (the newest: every control tick for this long first). */
export const treeRekeyRepeatMs = 500;

/**
 * Token: rekeys of one member tree a token keeps to replay on opening; past them it refuses
 * further ones ('gap') until enrolled again (the server then issues a membership at the tree's
 * current epoch).
 */
export const tokenTreeRekeysMax = 4096;

/** Token: group keys of recent tree epochs it keeps (a KEY of the previous epoch may still be in use). */
export const tokenTreeGroupKeysKept = 4;

/** Billing: receipts in one POST /v1/receipts/batch (charged in one transaction). */
export const receiptBatchMax = 1000;

/** Billing: largest body of POST /v1/receipts/batch (1000 receipts of at most 268 bytes, base64url). */
export const receiptBatchBodyBytesMax = 512 * 1024;

/** Billing: gaps listed by a purse's reconciliation (the count of missing receipts is always whole). */
export const reconciliationGapsListedMax = 100;

/** Purse: ids of the last debits a purse remembers, so a repeated KEY message is not paid twice. */
export const purseDebitIdsKept = 64;

/**
 * Token: receipts written and not yet reported to billing. At this many the token refuses the next
 * debit ("purse unavailable: … run gatecast token receipts") rather than lose a receipt.
 */
export const tokenReceiptsUnreportedMax = 10_000;

/** Token: reported receipts kept after billing took them, for `gatecast token receipts --resend`. */
export const tokenReceiptsReportedKept = 1000;

/** Token enrollment: the longest grant issued for an entitlement without an end (re-enroll to renew). */
export const enrollGrantMsMax = 31 * 24 * 3600 * 1000;
/** How often the console reads the status endpoints of the roles it watches, and pushes to browsers. */
export const consolePollIntervalMs = 1000;

/** How long the console waits for one status endpoint before showing it as unreachable. */
export const consoleStatusTimeoutMs = 900;

/** Points of history the console keeps per watched endpoint (at one a second: five minutes). */
export const consoleHistoryPointsMax = 300;

/** Status endpoints one console watches. */
export const consoleStatusSourcesMax = 64;

/** Live streams (server-sent events) open at once on one console; more are refused with 503. */
export const consoleStreamsMax = 32;

/** Bytes queued for one live stream that its client has not read; past it the stream is closed. */
export const consoleStreamQueuedBytesMax = 4 * 1024 * 1024;

/** Bytes of one watched status answer the console reads; a longer one shows the endpoint as failing. */
export const consoleStatusBytesMax = 1024 * 1024;

/** Rows of each table (sessions, parties, entitlements, accounts, transfers) the console sends. */
export const consoleTableRowsMax = 200;

/** With `--log-format json`, how often a daemon compares its status with the last one to log what changed. */
export const logEventPollIntervalMs = 250;

/**
 * The longest duration a setting in seconds may take (--duration, --timeout, --status-interval, …):
 * Node's timers hold at most 2^31 − 1 ms (about 24.8 days) and fire at once beyond it.
 */
export const settingDurationMsMax = 2_147_483_647;
