"""Benchmark of the audit trail: appends per second (fsync included) for one process and for
four processes appending at once, and ``verify_chain`` time for 100,000 records.

Runs in a temporary TRADING_HOME and TRADING_CONFIG_DIR (nothing of yours is touched)::

    python bench/audit_append.py [--appends 2000] [--records 100000]

Targets: at least 1,000 appends/s for one process; 100,000 records verified in under 2 s.
Exit code 0 when both targets are met, 1 otherwise.
"""
import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _worker(n: int, start_at: float) -> None:
    from audit_logging import AuditLogger
    al = AuditLogger()
    while time.time() < start_at:
        time.sleep(0.001)
    for i in range(n):
        al.log_event("order_submitted", "success", {"pid": os.getpid(), "i": i})


def _details(i: int) -> dict:
    return {"symbol": ("AAPL", "MSFT", "JPM")[i % 3], "qty": i % 100 + 1, "side": "BUY",
            "price": 100.0 + i % 50, "order_id": f"ord-{i:08d}"}


def bench_single(n: int) -> float:
    from audit_logging import AuditLogger
    al = AuditLogger()
    al.log_event("bench_start", "success", {})
    t0 = time.perf_counter()
    for i in range(n):
        al.log_event("order_submitted", "success", _details(i))
    return n / (time.perf_counter() - t0)


def bench_parallel(n_each: int, procs: int = 4) -> float:
    ctx = mp.get_context("fork")
    start_at = time.time() + 0.5
    workers = [ctx.Process(target=_worker, args=(n_each, start_at)) for _ in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"worker failed with exit code {w.exitcode}")
    elapsed = time.time() - start_at
    return n_each * procs / elapsed


def build_trail(records: int):
    """Write ``records`` valid records straight to a fresh trail (same format and key as
    log_event, without one fsync per record, which would take minutes)."""
    from audit_logging import AuditLogger
    from audit_checkpoint import mac as _mac, canonical_json
    al = AuditLogger(Path(os.environ["TRADING_HOME"]) / "logs/audit_bench/audit_log.jsonl")
    al.log_event("bench_genesis", "success", {})
    last = al.tail(1)[0]
    key = al._load_key(create=False)
    prev, seq, out = last["hash"], last["seq"], []
    for i in range(records - 1):
        seq += 1
        rec = {"seq": seq, "timestamp": "2025-01-02T14:31:05.123456Z", "action": "order_submitted",
               "status": "success", "details": _details(i), "prev_hash": prev}
        rec["hash"] = prev = _mac(key, canonical_json(rec).encode())
        out.append(canonical_json(rec))
    with open(al.path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")
    al.checkpoint.write(key, seq, prev, None)
    return al


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=2000, help="appends for one process")
    parser.add_argument("--records", type=int, default=100_000, help="records to verify")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit_bench_") as tmp:
        os.environ["TRADING_HOME"] = str(Path(tmp) / "home")
        os.environ["TRADING_CONFIG_DIR"] = str(Path(tmp) / "keys")
        Path(tmp, "home").mkdir()
        from audit_logging import AuditLogger

        single = bench_single(args.appends)
        print(f"one process : {single:8.0f} appends/s ({args.appends} appends, fsync each)")
        parallel = bench_parallel(args.appends // 4)
        print(f"4 processes : {parallel:8.0f} appends/s in total ({args.appends // 4} each, "
              f"same file, flock)")
        valid, error = AuditLogger().verify_chain()
        n = sum(1 for _ in open(AuditLogger().path))
        print(f"              trail after both: {n} records, valid={valid} {error or ''}")

        al = build_trail(args.records)
        size = al.path.stat().st_size / 1e6
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            valid, error = al.verify_chain()
            best = min(best, time.perf_counter() - t0)
            assert valid, error
        print(f"verify_chain: {best:8.3f} s for {args.records} records ({size:.1f} MB), "
              f"best of 3")
    ok = single >= 1000 and best < 2.0 * args.records / 100_000
    print("targets (>= 1000 appends/s, 100k verified < 2 s):", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
