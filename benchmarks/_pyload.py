"""A bounded Python load generator: ``python -m benchmarks._pyload --port P ...``.

Used when wrk is not installed, and for paced load (``--rate``), which wrk
can't do. asyncio, HTTP/1.1 keep-alive on raw streams, one coroutine per
connection; stops at ``--duration`` seconds or ``--max-requests``, whichever
comes first. Prints the same ``BENCHJSON {...}`` line as the wrk script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from ._http import build_request, parse_head


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


async def _connection(
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    budget: list[int],
    interval: float | None,
    latencies: list[float],
    errors: dict[str, int],
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        errors["connect"] += 1
        return
    i = offset
    next_at = time.perf_counter()
    try:
        while budget[0] > 0:
            now = time.perf_counter()
            if now >= stop_at:
                break
            if interval is not None:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at += interval
            budget[0] -= 1
            raw = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            writer.write(raw)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = parse_head(head[:-4])
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
            except (asyncio.IncompleteReadError, ConnectionError):
                errors["read"] += 1
                break
            latencies.append(time.perf_counter() - t0)
            if not 200 <= status < 400:
                errors["status"] += 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    headers = {}
    if args.auth:
        headers["Authorization"] = args.auth
    body = (args.body or "").encode()
    if args.body:
        headers["Content-Type"] = "application/json"
    paths = [args.path]
    if args.paths:
        with open(args.paths) as f:
            paths = [line.strip() for line in f if line.strip()]
    requests = [build_request(args.method, p, body, headers) for p in paths]
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    budget = [args.max_requests]
    interval = args.connections / args.rate if args.rate else None
    start = time.perf_counter()
    stop_at = start + args.duration
    step = max(1, len(requests) // args.connections)
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _connection(
                    args.port, requests, c * step, stop_at, budget, interval, latencies, errors
                )
                for c in range(args.connections)
            )
        ),
        timeout=args.duration + 30,
    )
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        **errors,
        "p50_us": int(_percentile(lat, 50) * 1e6),
        "p99_us": int(_percentile(lat, 99) * 1e6),
        "mean_us": sum(lat) / len(lat) * 1e6 if lat else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/hello")
    p.add_argument("--paths", help="file of paths, requested round-robin")
    p.add_argument("--method", default="GET")
    p.add_argument("--body")
    p.add_argument("--auth")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, help="total requests/s, paced (default: flat out)")
    result = asyncio.run(run(p.parse_args()))
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
