/** A latency workaround on the SSH server's sockets: its KEXINIT waits for the client's (holdKexInit). */
import type { Socket } from "node:net";

/** How long the server's KEXINIT waits for the client's at most (see holdKexInit). */
const KEXINIT_HOLD_MS = 200;

/**
 * Makes the server's first binary packet (its KEXINIT) wait until the client's KEXINIT has
 * arrived, or KEXINIT_HOLD_MS at most. ssh2 sends it as soon as it has read the client's
 * identification line, so when the client's KEXINIT then arrives the server has nothing to send,
 * and its kernel delays the ACK (40 ms). OpenSSH's client does not set TCP_NODELAY without a
 * terminal, so Nagle's algorithm holds its next packet (KEX_ECDH_INIT) until that ACK: 40 ms of
 * every `ssh host svc//ping`. Sent after the client's KEXINIT, ours carries the ACK at once. The
 * wrapper is on this one socket, before ssh2 sees it; the identification line is never held, and
 * only clients that identify as OpenSSH are held for.
 */
export function holdKexInit(socket: Socket): void {
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  const held: unknown[][] = [];
  let identSent = false;
  let seen = Buffer.alloc(0);
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    clearTimeout(timer);
    socket.off("data", onData);
    socket.write = write as typeof socket.write;
    for (const args of held.splice(0)) if (!socket.destroyed) write(...args);
  };
  // The client's identification line ends with LF; any byte after it is its first packet. Only
  // OpenSSH's client is held for: for others (ssh2, pgoctl: TCP_NODELAY) the hold would only make
  // the two KEXINITs cross one after the other instead of at once, a round trip more under load.
  // This listener runs before ssh2's (it is added first), so the decision is made before ssh2
  // reads the identification line and writes its KEXINIT.
  const onData = (d: Buffer): void => {
    seen = Buffer.concat([seen, d]);
    const lf = seen.indexOf(0x0a);
    if (lf >= 0 && !seen.subarray(0, lf).toString("latin1").startsWith("SSH-2.0-OpenSSH")) release();
    else if ((lf >= 0 && seen.length > lf + 1) || seen.length > 8192) release();
  };
  const timer = setTimeout(release, KEXINIT_HOLD_MS);
  socket.on("data", onData);
  socket.once("close", release);
  socket.write = ((...args: unknown[]): boolean => {
    if (released) return write(...args);
    if (!identSent) {
      identSent = true;
      return write(...args);
    }
    held.push(args);
    return true;
  }) as typeof socket.write;
}
