/** Human-readable figures for summaries and the progress bar. */

/** "20.0 MB", "512 B". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** "95.3 Mbit/s". */
export function formatRate(bitsPerSecond: number): string {
  if (bitsPerSecond >= 1e9) {
    return `${(bitsPerSecond / 1e9).toFixed(2)} Gbit/s`;
  }
  if (bitsPerSecond >= 1e6) {
    return `${(bitsPerSecond / 1e6).toFixed(1)} Mbit/s`;
  }
  return `${(bitsPerSecond / 1e3).toFixed(1)} kbit/s`;
}

/** "[##########----------]  50%". */
export function progressBar(fraction: number, width = 30): string {
  const clamped = Math.max(0, Math.min(1, fraction));
  const filled = Math.round(clamped * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(clamped * 100).toFixed(0).padStart(3)}%`;
}

/**
 * CPU seconds (user + system, every thread) this process has used so far, for the `--json`
 * summaries of send and receive: what a transfer cost, start-up included.
 */
export function processCpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return Math.round((user + system) / 1000) / 1000;
}
