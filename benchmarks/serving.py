"""Issue 31: routed inference served under load: micro-batching against one request per forward.

    HF_HUB_OFFLINE=1 accelerate launch recipes/sci_wp_dispatch.py      # the main job's model folders
    HF_HUB_OFFLINE=1 python benchmarks/serving.py --model outputs/sci_wp_dispatch/wp-signature \
        --clients 8 --requests 2000 --out benchmarks/results/serving.json

Starts ``nli-routing serve`` (``nli_routing.inference.serving``) on loopback twice, with the same model:
micro-batching (``--max_batch 64 --max_wait_ms 5``) and one request per forward (``--max_batch 1``).
``--clients`` threads (one keep-alive HTTP connection each) send ``--requests`` pairs in all, the
embedded joint test pairs with their signatures, so the signatures within a batch are mixed. Records
throughput (pairs/s), p50 / p99 latency, errors and the server's counts (forwards, pairs per forward).
Then an overload run: a server with ``--queue_size 8`` and ``--overload_clients`` clients; every
request must get an answer (200, or 503 "busy"), none a dropped connection, and the server must still
answer afterwards. Server and clients share this machine's cores (the clients are threads of this
process, the server one process with one torch thread).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def start_server(model: str, port: int, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nli_routing.inference.serving", model, "--port", str(port),
                             "--no_app", *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server stopped: {proc.stderr.read()[-2000:]}")
        try:
            health(port)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 180 s")


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def load(port: int, pairs: list[dict], clients: int) -> dict:
    """``clients`` threads send ``pairs`` (shared, in order); latency and status of every request."""
    lock = threading.Lock()
    todo = iter(range(len(pairs)))
    results: list[tuple[float, int]] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            body = json.dumps(pairs[i])
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as err:
                errors.append(f"{type(err).__name__}: {err}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            with lock:
                results.append((time.perf_counter() - t, status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = sorted(lat for lat, status in results if status == 200)
    statuses: dict[str, int] = {}
    for _, status in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    def pct(q: float) -> float | None:
        return None if not ok else 1000 * ok[min(len(ok) - 1, int(q * len(ok)))]

    return {"requests": len(pairs), "clients": clients, "seconds": wall, "answered_200": len(ok),
            "throughput_pairs_per_s": len(ok) / wall, "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99),
            "latency_ms_mean": None if not ok else 1000 * statistics.mean(ok), "statuses": statuses,
            "connection_errors": len(errors), "first_errors": errors[:3]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a saved model folder routed on signatures (or dispatching)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--overload_clients", type=int, default=64)
    ap.add_argument("--overload_requests", type=int, default=640)
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from nli_routing.experiments.bench import commit, embedded_pairs, machine

    pairs = embedded_pairs(args.requests)
    result = {"machine": machine(), "commit": commit(), "args": vars(args), "runs": {}}
    modes = {"micro-batching (max_batch 64, max_wait 5 ms)": ["--max_batch", "64", "--max_wait_ms", "5"],
             "one request per forward (max_batch 1)": ["--max_batch", "1", "--max_wait_ms", "0"]}
    for name, flags in modes.items():
        server = start_server(args.model, args.port, *flags)
        try:
            load(args.port, pairs[:64], args.clients)  # warm-up
            run = load(args.port, pairs, args.clients)
            run["server"] = health(args.port)
        finally:
            server.terminate()
            server.wait(30)
        result["runs"][name] = run
        print(f"{name}: {run['throughput_pairs_per_s']:.0f} pairs/s, p50 {run['latency_ms_p50']:.1f} ms, "
              f"p99 {run['latency_ms_p99']:.1f} ms, statuses {run['statuses']}, connection errors "
              f"{run['connection_errors']}, forwards {run['server']['forwards']} "
              f"({run['server']['batched_pairs'] / max(1, run['server']['forwards']):.1f} pairs each)", flush=True)
    batched, single = result["runs"].values()
    result["throughput_ratio"] = batched["throughput_pairs_per_s"] / single["throughput_pairs_per_s"]
    print(f"throughput ratio micro-batching / one per forward: {result['throughput_ratio']:.2f}x")

    server = start_server(args.model, args.port, "--max_batch", "64", "--max_wait_ms", "5", "--queue_size", "8")
    try:
        over = load(args.port, (pairs * 2)[: args.overload_requests], args.overload_clients)
        over["server_after"] = health(args.port)  # still answering
    finally:
        server.terminate()
        server.wait(30)
    result["overload"] = over
    print(f"overload ({args.overload_clients} clients, queue_size 8): statuses {over['statuses']}, connection errors "
          f"{over['connection_errors']}, server still answering: {bool(over['server_after'])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
