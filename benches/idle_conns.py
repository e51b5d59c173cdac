#!/usr/bin/env python3
"""Memory per connection of a proxy, for benches/load.sh (IDLE_CONNS).

  idle_conns.py clients PORT PATH N PID...
      Opens N keep-alive connections to 127.0.0.1:PORT, sends one GET PATH on each, reads
      the whole answer, and keeps them open and idle. Prints the summed VmRSS of PID... (KiB)
      before and with the N idle connections, and the bytes per idle connection.

  idle_conns.py paced PORT PATH N PID...
      The same, the connections opened 256 at a time, one second apart (clients of a real
      deployment arrive over time): a proxy that releases a quiet connection's buffers
      (Portcullis parks it after 500 ms) is measured holding what an idle connection holds,
      not the buffers of a burst of connections all busy at once, which the allocator keeps
      for the next ones.

  idle_conns.py pooled PORT PATH SLOW_PORT N PID...
      Serves a slow upstream on 127.0.0.1:SLOW_PORT (each answer 300 ms late), sends N
      concurrent GET PATH through the proxy (which must route PATH to SLOW_PORT), so the proxy
      opens N upstream connections, then closes the clients: the proxy keeps up to N idle
      pooled upstream connections. Prints the RSS before, after, the number of upstream
      connections left open by the proxy, and the bytes per pooled upstream connection.

Only 127.0.0.1 is ever used. Every wait has a deadline.
"""

import asyncio
import sys

HOST = "127.0.0.1"
DEADLINE = 60.0


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def one_request(path, reader, writer):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"GET {path} answered {status.decode()}")


async def settle(pids, seconds=1.5):
    """RSS after the proxy had time to finish its work (no reading faster than that)."""
    await asyncio.sleep(seconds)
    return rss_kib(pids)


BATCH = 256


async def clients(port, path, n, pids, pace=0.0):
    before = await settle(pids, 0.5)
    conns = []
    sem = asyncio.Semaphore(BATCH)

    async def open_one():
        async with sem:
            reader, writer = await asyncio.open_connection(HOST, port)
            await one_request(path, reader, writer)
            conns.append(writer)

    if pace:
        for start in range(0, n, BATCH):
            batch = range(start, min(n, start + BATCH))
            await asyncio.wait_for(asyncio.gather(*(open_one() for _ in batch)), DEADLINE)
            await asyncio.sleep(pace)
    else:
        await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(n))), DEADLINE)
    after = await settle(pids)
    for w in conns:
        w.close()
    print(
        f"IDLE{'_PACED' if pace else ''} clients={n} rss_before_kib={before} "
        f"rss_idle_kib={after} bytes_per_conn={(after - before) * 1024 / n:.0f}"
    )


async def pooled(port, path, slow_port, n, pids):
    upstream_open = 0

    async def slow(reader, writer):
        nonlocal upstream_open
        upstream_open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                await asyncio.sleep(0.3)
                body = b"slow\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            upstream_open -= 1
            writer.close()

    server = await asyncio.start_server(slow, HOST, slow_port, backlog=4096)
    before = await settle(pids, 0.5)
    writers = []

    async def one():
        reader, writer = await asyncio.open_connection(HOST, port)
        await one_request(path, reader, writer)
        writers.append(writer)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), DEADLINE)
    for w in writers:
        w.close()
    after = await settle(pids)
    kept = upstream_open
    per = (after - before) * 1024 / kept if kept else float("nan")
    print(
        f"POOLED requests={n} upstream_conns_kept={kept} rss_before_kib={before} "
        f"rss_pooled_kib={after} bytes_per_pooled_conn={per:.0f}"
    )
    server.close()


def main(argv):
    mode = argv[1]
    if mode in ("clients", "paced"):
        port, path, n = int(argv[2]), argv[3], int(argv[4])
        asyncio.run(clients(port, path, n, argv[5:], 1.0 if mode == "paced" else 0.0))
    elif mode == "pooled":
        port, path, slow_port, n = int(argv[2]), argv[3], int(argv[4]), int(argv[5])
        asyncio.run(pooled(port, path, slow_port, n, argv[6:]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
