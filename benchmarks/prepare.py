"""``sumi data prepare`` throughput against the tokenizer's own batch encoding, and its peak memory
at two input sizes (issue 20: goal >= 0.8 of the raw throughput, peak memory independent of size).

Input, generated here into a temporary directory (``--workdir`` chooses where; deleted at the
end unless ``--keep``; nothing is committed): a JSON Lines corpus of ``--gb`` (default 1; 1 GB =
10^9 bytes of file) or ``--mb``, one ``{"text": ...}`` line per document.  Each document is a cut
of real text every install has: with probability 1/2 from the embedded English corpus
(``sumi.tokenizer.tiny_corpus()``, 38 KB), else from the standard library's ``.py`` files
(``sumi.data.sources.stdlib_files()`` concatenated, about 12 MB); its length in characters is
drawn log-normally (median 2000, sigma 1, clipped to ``[16, 100000]`` and to the text) and its
start uniformly, all from ``random.Random(--seed)``.  Lines are ``json.dumps`` of each document
(the C encoder: about 220 MB/s on the 2-core VM, so 1 GB takes seconds), written in 8 MB
buffers.  The small input is the first ``--small`` (default 1/8) of the same stream, written at
the same time: a prefix of the big file, line for line.

Per input, in this order:

- ``raw``: a fresh interpreter with ``RAYON_NUM_THREADS=N`` reads the file's lines in batches cut
  as prepare cuts its chunks (``sumi.data.chunking.ENCODE_CHARS`` characters or
  ``CHUNK_ITEMS`` documents) and times only ``tokenizer.backend.encode_batch(texts,
  add_special_tokens=False)`` (the Rust batch encoding; reading and JSON parsing are not timed),
  counting the tokens.  This is the ceiling: the tokenizer's own parallel encoding on the same
  text with the same number of threads.
- ``prepare``: ``python -m sumi data prepare --workers N --source FILE --out DIR --seq-len 1184
  --tokenizer FILE`` as a subprocess (``RAYON_NUM_THREADS=N`` too, which bounds the calling
  process's pool when N = 1; with N > 1 each worker encodes on one thread).  Wall time is the
  whole command, interpreter start-up and worker spawn included.

Both use the same tokenizer: the embedded default (``SumiTokenizer.default()``, 512 ids) saved to
``tokenizer.json`` in the work directory.  Tokens are compared as TEXT tokens: the raw count has
no BOS/EOS, so prepare's count is ``total_tokens + dropped_tokens - 2 x documents`` from its
manifest (every document is written ``BOS text EOS``); the two counts must be equal
(``tokens_match``), which checks that prepare encoded exactly the text the raw pass did.
Throughput = text tokens / seconds; ``ratio`` = prepare / raw.  CPU seconds are reported too
(raw: the process's CPU time inside ``encode_batch``; prepare: the whole process tree, from
``RUSAGE_CHILDREN``): their ratio holds on a machine other processes keep busy.  Prepare's CPU
time is also split between its main process (reading, JSON, packing, writing) and the others
(the workers: importing, tokenizing), as last read from ``/proc/PID/stat`` while polling (each
up to 50 ms short).

Peak memory (Linux only: it reads ``/proc``): every 50 ms the RSS (``VmRSS``) of the prepare
process and all its descendants (found through ``/proc/PID/task/*/children``: the spawned
workers and multiprocessing's resource tracker) is summed; the peak is the largest sum.  The
two inputs' peaks and their ratio (big / small) show whether memory grows with the input.

    python benchmarks/prepare.py                     # 1 GB, 1/8 prefix, workers = this machine's CPUs
    python benchmarks/prepare.py --gb 2 --workers 4 --workdir /scratch
    python benchmarks/prepare.py --mb 1 --workers 1  # a smoke run

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import OtherLoad, hardware, run_worker, warn_if_busy  # noqa: E402  (benchmarks/ is on sys.path)

SEQ_LEN = 1184  # the CLI's default (the released recipe's length)
POLL_S = 0.05
BUFFER_BYTES = 8 << 20
MEDIAN_CHARS, SIGMA, MIN_CHARS, MAX_CHARS = 2000, 1.0, 16, 100_000
GOAL = 0.8


def generate(big: Path, small: Path, size: int, small_size: int, seed: int) -> dict:
    """Write ``size`` bytes (whole lines; the last line may pass it) of ``{"text": ...}`` lines
    to ``big``, the first ``small_size`` bytes (whole lines) of the same lines to ``small``."""
    from sumi.data.sources import stdlib_files
    from sumi.tokenizer import tiny_corpus

    start = time.perf_counter()
    pools = [tiny_corpus(), "".join(p.read_text(encoding="utf-8") for p in stdlib_files())]
    rng = random.Random(seed)
    written = {big: 0, small: 0}
    docs = {big: 0, small: 0}
    with open(big, "w", encoding="utf-8") as fb, open(small, "w", encoding="utf-8") as fs:
        buffer: list[str] = []
        buffered = 0
        small_open = True
        while written[big] + buffered < size:
            pool = pools[rng.random() < 0.5]
            length = min(len(pool), max(MIN_CHARS, min(MAX_CHARS, round(rng.lognormvariate(math.log(MEDIAN_CHARS),
                                                                                            SIGMA)))))
            at = rng.randrange(len(pool) - length + 1)
            line = json.dumps({"text": pool[at:at + length]}) + "\n"  # ASCII (ensure_ascii): bytes == chars
            buffer.append(line)
            buffered += len(line)
            docs[big] += 1
            if small_open:  # the small file: the same lines, until it reaches its size
                fs.write(line)
                written[small] += len(line)
                docs[small] += 1
                small_open = written[small] < small_size
            if buffered >= BUFFER_BYTES:
                fb.write("".join(buffer))
                written[big] += buffered
                buffer, buffered = [], 0
        fb.write("".join(buffer))
        written[big] += buffered
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": written[big] / 1e6 / seconds,
            "bytes": {"big": written[big], "small": written[small]},
            "documents": {"big": docs[big], "small": docs[small]}}


def raw(args: argparse.Namespace) -> dict:
    """The tokenizer's batch encoding of ``args.source`` in prepare's chunks (``--worker raw``)."""
    from sumi.data.chunking import CHUNK_ITEMS, ENCODE_CHARS
    from sumi.tokenizer import SumiTokenizer

    backend = SumiTokenizer.from_file(args.tokenizer).backend
    tokens = documents = batches = 0
    seconds = cpu_seconds = 0.0

    def encode(texts: list[str]) -> None:
        nonlocal tokens, documents, batches, seconds, cpu_seconds
        start, cpu_start = time.perf_counter(), time.process_time()
        encoded = backend.encode_batch(texts, add_special_tokens=False)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        tokens += sum(len(e) for e in encoded)
        documents += len(texts)
        batches += 1

    texts, chars = [], 0
    with open(args.source, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if not text:
                continue  # prepare leaves empty documents out (the generator writes none)
            texts.append(text)
            chars += len(text)
            if chars >= ENCODE_CHARS or len(texts) >= CHUNK_ITEMS:
                encode(texts)
                texts, chars = [], 0
    if texts:
        encode(texts)
    return {"tokens": tokens, "documents": documents, "batches": batches, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu_seconds,
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS"), "encode_chars": ENCODE_CHARS}


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += map(int, f.read().split())
    except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
        pass
    return kids


def poll_tree(pid: int, cpu: dict[int, float]) -> int:
    """The summed resident set (bytes) of ``pid`` and its descendants now; records each one's CPU
    seconds so far (user + system, ``/proc/PID/stat``) in ``cpu``."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
        total += rss
        cpu[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        stack += _children(p)
    return total


def run_prepare(source: Path, out: Path, tokenizer: Path, workers: int) -> dict:
    """``sumi data prepare`` on ``source``: wall time, CPU time and peak RSS of its process tree."""
    cmd = [sys.executable, "-m", "sumi", "data", "prepare", "--workers", str(workers), "--source", str(source),
           "--out", str(out), "--seq-len", str(SEQ_LEN), "--tokenizer", str(tokenizer)]
    env = {**os.environ, "RAYON_NUM_THREADS": str(workers)}
    env.pop("TOKENIZERS_PARALLELISM", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = 0
    cpu: dict[int, float] = {}
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        while proc.poll() is None:
            peak = max(peak, poll_tree(proc.pid, cpu))
            time.sleep(POLL_S)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            stderr.seek(0)
            return {"error": f"exit {proc.returncode}: {stderr.read().decode(errors='replace').strip()[-500:]}"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest = json.loads((out / "manifest.json").read_text())
    written = manifest["total_tokens"] + manifest["dropped_tokens"]
    text_tokens = written - 2 * manifest["documents"]
    total_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": total_cpu, "tokens_written": written, "text_tokens": text_tokens,
            "documents": manifest["documents"], "rows": manifest["total_rows"], "shards": len(manifest["shards"]),
            "dropped_tokens": manifest["dropped_tokens"], "tokens_per_s": text_tokens / seconds,
            "tokens_per_cpu_s": text_tokens / total_cpu, "peak_rss_bytes": peak, "processes": len(cpu),
            "main_cpu_seconds": cpu.get(proc.pid, 0.0), "others_cpu_seconds": sum(cpu.values()) - cpu.get(proc.pid, 0.0),
            "command": " ".join(cmd[1:])}


def measure(name: str, source: Path, work: Path, tokenizer: Path, args: argparse.Namespace) -> dict:
    """The raw encoding, then prepare, of one input; the prepare output is deleted unless ``--keep``."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.workers)}
    env.pop("TOKENIZERS_PARALLELISM", None)  # "false" would switch the raw pass's parallelism off
    r = run_worker([sys.executable, os.path.abspath(__file__), "--worker", "raw", "--source", str(source),
                    "--tokenizer", str(tokenizer)], env=env)
    out = work / f"prepared-{name}"
    p = run_prepare(source, out, tokenizer, args.workers)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    row = {"input_bytes": source.stat().st_size, "raw": r, "prepare": p}
    if "error" not in r and "error" not in p:
        row.update(ratio=p["tokens_per_s"] / r["tokens_per_s"], ratio_cpu=p["tokens_per_cpu_s"] / r["tokens_per_cpu_s"],
                   tokens_match=p["text_tokens"] == r["tokens"] and p["documents"] == r["documents"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--gb", type=float, help="input size in GB (10^9 bytes; default 1)")
    size.add_argument("--mb", type=float, help="input size in MB (10^6 bytes), for small runs")
    parser.add_argument("--small", type=float, default=1 / 8, help="the small input's share of the big one "
                                                                   "(a prefix; default 1/8)")
    parser.add_argument("--workers", "--threads", dest="workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="prepare's --workers and the raw encoding's RAYON_NUM_THREADS (default: this "
                             "process's CPUs)")
    parser.add_argument("--seed", type=int, default=0, help="the generator's random.Random seed")
    parser.add_argument("--workdir", help="where to create the temporary directory (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and prepare's outputs")
    parser.add_argument("--worker", choices=["raw"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(raw(args)))
        return
    if not sys.platform.startswith("linux"):
        parser.error("the process-tree memory is read from /proc: Linux only")
    size_bytes = round((args.mb * 1e6) if args.mb is not None else (args.gb if args.gb is not None else 1.0) * 1e9)
    if size_bytes < 1:
        parser.error(f"--gb/--mb: the input must be at least 1 byte, got {size_bytes} bytes")
    if not 0 < args.small < 1:
        parser.error(f"--small must lie in (0, 1), got {args.small}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        parser.error(f"--workdir {args.workdir}: not a directory")

    import tokenizers

    from sumi.tokenizer import SumiTokenizer

    work = Path(tempfile.mkdtemp(prefix="sumi-prepare-bench-", dir=args.workdir))
    load_start = os.getloadavg()
    try:
        tokenizer = SumiTokenizer.default().save(work / "tokenizer.json")
        big, small = work / "corpus.jsonl", work / "corpus-small.jsonl"
        gen = generate(big, small, size_bytes, round(size_bytes * args.small), args.seed)
        with OtherLoad() as load:
            rows = {"small": measure("small", small, work, tokenizer, args),
                    "big": measure("big", big, work, tokenizer, args)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    peaks = [rows[k]["prepare"].get("peak_rss_bytes") for k in ("small", "big")]
    peak_ratio = peaks[1] / peaks[0] if all(peaks) else None
    ratios = [rows[k].get("ratio") for k in ("small", "big")]
    hw = hardware()
    print(f"sumi data prepare vs the tokenizer's batch encoding: JSONL of {gen['documents']['big']:,} documents "
          f"({size_bytes / 1e6:,.0f} MB; generated at {gen['mb_per_s']:.0f} MB/s), its first "
          f"{args.small:.3g} as the small input; seq-len {SEQ_LEN}, {args.workers} workers = "
          f"RAYON_NUM_THREADS; tokenizers {tokenizers.__version__}, {hw['cpu']} x {hw['cpus']}")
    print("tok/s: text tokens (prepare's written tokens minus BOS and EOS per document) per wall second; "
          "peak RSS: prepare's whole process tree")
    warn_if_busy(load.share)
    print(f"{'input MB':>9}{'docs':>10}{'workers':>8}{'raw tok/s':>12}{'prepare tok/s':>15}{'ratio':>7}"
          f"{'(cpu)':>7}{'prepare s':>10}{'cpu s main':>11}{'others':>8}{'peak RSS MB':>12}{'tokens equal':>13}")
    for name in ("small", "big"):
        row = rows[name]
        r, p = row["raw"], row["prepare"]
        if "error" in r or "error" in p:
            print(f"{row['input_bytes'] / 1e6:>9.1f} failed: {r.get('error') or p.get('error')}")
            continue
        print(f"{row['input_bytes'] / 1e6:>9.1f}{p['documents']:>10,}{args.workers:>8}{r['tokens_per_s']:>12,.0f}"
              f"{p['tokens_per_s']:>15,.0f}{row['ratio']:>7.2f}{row['ratio_cpu']:>7.2f}{p['seconds']:>10.1f}"
              f"{p['main_cpu_seconds']:>11.1f}{p['others_cpu_seconds']:>8.1f}{p['peak_rss_bytes'] / 1e6:>12.0f}"
              f"{'yes' if row['tokens_match'] else 'NO':>13}")
    if peak_ratio is not None:
        print(f"peak RSS big / small: {peak_ratio:.2f} for {rows['big']['input_bytes'] / rows['small']['input_bytes']:.1f}x "
              f"the input; goal ratio >= {GOAL}: {'met' if ratios[1] is not None and ratios[1] >= GOAL else 'not met'}")
    print(json.dumps({
        "benchmark": "prepare.throughput", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw, "tokenizers": tokenizers.__version__, "workers": args.workers, "seq_len": SEQ_LEN,
        "seed": args.seed, "input_bytes": size_bytes, "small_share": args.small, "generate": gen,
        "tokens_compared": "text tokens (prepare: total_tokens + dropped_tokens - 2 x documents)",
        "memory": "peak of the summed VmRSS of prepare's process tree, polled every 50 ms (Linux /proc)",
        "results": rows, "ratio": ratios[1], "ratio_small": ratios[0], "peak_rss_ratio": peak_ratio,
        "goal": GOAL, "goal_met": ratios[1] is not None and ratios[1] >= GOAL,
        "workdir": str(work), "kept": args.keep, "other_cpu_share": load.share,
        "loadavg_start": load_start, "loadavg_end": load_end,
    }))


if __name__ == "__main__":
    main()
