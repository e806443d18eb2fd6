"""``fmmc serve`` under an abuse load over raw sockets, with valid clients alongside.

    python benchmarks/bench_serve_abuse.py                 # builds a tiny offline model, ~1-2 min on 2 cores
    python benchmarks/bench_serve_abuse.py --quick         # fewer of each, smaller large images
    python benchmarks/bench_serve_abuse.py --model runs/demo/model --large-side 6000 --large 6

The server runs as a separate process (``python -m fmmc.cli.main serve``, token from ``$FMMC_SERVE_TOKEN``,
``--read-timeout`` short so the stalled groups end quickly). The load, in this order, while a valid client
keeps classifying a small photo:

* huge declared bodies (``Content-Length: 10^10``) with and without ``Expect: 100-continue``, body never sent;
* stalled uploads held open at once: huge declared bodies, bodies within the limit that never come, and
  headers that never end (slowloris);
* unauthenticated 19 MB bodies, actually sent;
* malformed request lines and headers;
* concurrent large valid images (``--large-side`` square JPEGs), authenticated.

It prints, per group: requests, answers by status, unanswered ones, 5xx, and the time to the answer; then
the time to refuse a declared-oversize request, the server's RSS at rest before the load, its peak
(``VmHWM``) and its RSS after the load, as a ratio to the rest figure.
"""

from __future__ import annotations

import argparse
import io
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

TOKEN = "bench-" + os.urandom(8).hex()
READ_TIMEOUT = 2.0
HUGE = 10_000_000_000


# ----- the server -----
def build_model(root: Path) -> Path:
    """A tiny vision-only model (EfficientNet-Lite0 at 128 px) on synthetic textures, as the tests use."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_serve import make_texture_dataset

    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    data = make_texture_dataset(root / "data", per_class=4)
    train(TrainConfig(data=str(data), out=str(root / "run"), backbone="builtin:efficientnet-lite0", image_size=128,
                      streams="vision", epochs=10, lr=1e-3, progress=False, cache_dir=str(root / "cache")))
    return root / "run" / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, port: int, concurrency: int, budget: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fmmc.cli.main", "serve", str(model), "--port", str(port),
           "--max-concurrency", str(concurrency), "--read-timeout", str(READ_TIMEOUT)]
    cmd += ["--max-pixels-in-flight", str(budget)] if budget else []
    env = dict(os.environ, FMMC_SERVE_TOKEN=TOKEN, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        if status_of(exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1)[0]) == 200:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# ----- raw HTTP -----
def exchange(port: int, data: bytes, wait: float, body: bytes = b"") -> tuple[bytes, float]:
    """Send ``data`` (then ``body`` from a thread, as a client streaming an upload), read until the server
    closes or ``wait`` s pass: (what came back, seconds to the first byte of the answer, or inf)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    except OSError:
        return b"", float("inf")
    with s:
        t0 = time.monotonic()
        s.sendall(data)
        if body:
            threading.Thread(target=_send_quietly, args=(s, body), daemon=True).start()
        got, first = b"", float("inf")
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            first = min(first, time.monotonic() - t0)
            got += chunk
            if b"\r\n\r\n" in got and not got.startswith(b"HTTP/1.1 100"):
                head, _, rest = got.partition(b"\r\n\r\n")
                length = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
                if length and len(rest) >= int(length[0].split(b":")[1]):
                    break
        return got, first


def _send_quietly(s: socket.socket, body: bytes) -> None:
    try:
        s.sendall(body)
    except OSError:
        pass  # the server answered and stopped reading: expected


def status_of(raw: bytes) -> int | None:
    """The final (non-1xx) status in ``raw``, or None when there is none."""
    while raw.startswith(b"HTTP/1.1 1"):
        raw = raw.partition(b"\r\n\r\n")[2]
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def head(path: str = "/v1/classify", length: int | None = HUGE, expect: bool = False, auth: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=B0UND"]
    lines += [f"Content-Length: {length}"] if length is not None else []
    lines += ["Expect: 100-continue"] if expect else []
    lines += [f"Authorization: Bearer {TOKEN}"] if auth else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def multipart(data: bytes, name: str = "photo.jpg") -> bytes:
    return (f"--B0UND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n--B0UND--\r\n"


def jpeg(side: int, seed: int = 0) -> bytes:
    """A photo-like square JPEG (smooth stripes and mild noise: a few MB even at 6000x6000)."""
    rng = np.random.default_rng(seed)
    x = np.arange(512, dtype=np.float32)
    base = 120 + 60 * np.sin(x / 23)[None, :, None] + 40 * np.cos(x / 37)[:, None, None] + [[[10, 0, -20]]]
    tile = np.clip(base + rng.normal(0, 6, (512, 512, 3)), 0, 255).astype(np.uint8)
    reps = -(-side // 512)
    arr = np.tile(tile, (reps, reps, 1))[:side, :side]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


# ----- the load -----
class Group:
    def __init__(self, name: str) -> None:
        self.name = name
        self.statuses: Counter[str] = Counter()
        self.times: list[float] = []

    def add(self, raw: bytes, took: float) -> None:
        status = status_of(raw)
        self.statuses[str(status) if status is not None else "none"] += 1
        if status is not None:
            self.times.append(took)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def unanswered(self) -> int:
        return self.statuses["none"]

    @property
    def errors_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5"))


def run_many(group: Group, n: int, fn: Callable[[], tuple[bytes, float]], workers: int = 32) -> Group:
    with ThreadPoolExecutor(workers) as ex:
        for raw, took in ex.map(lambda _: fn(), range(n)):
            group.add(raw, took)
    return group


def stalled(port: int, n: int) -> Group:
    """``n`` connections opened at once and left stalled, in three kinds; every one must be answered and closed."""
    group = Group(f"{n} stalled at once")
    kinds = [head(expect=True), head(expect=False), head(length=1_000_000),  # 413, 413, 408 (body never sent)
             b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "]  # headers never end: 408
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(kinds[i % len(kinds)])
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [b"", float("inf")])
    deadline = t0 + READ_TIMEOUT + 10
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s, state = key.fileobj, key.data
            try:
                chunk = s.recv(65536)  # type: ignore[union-attr]
            except OSError:
                chunk = b""
            if chunk:
                state[0] += chunk
                state[1] = min(state[1], time.monotonic() - t0)
                continue
            sel.unregister(s)
            s.close()  # type: ignore[union-attr]
            group.add(state[0], state[1])
    for key in list(sel.get_map().values()):  # never closed by the server
        group.add(b"", float("inf"))
        key.fileobj.close()  # type: ignore[union-attr]
    return group


class ValidClient(threading.Thread):
    def __init__(self, port: int, photo: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.body = port, multipart(photo, "small.jpg")
        self.stop = threading.Event()
        self.group = Group("valid client, small photo (during the load)")

    def run(self) -> None:
        while not self.stop.is_set():
            raw, took = exchange(self.port, head(length=len(self.body)) + self.body, 60)
            self.group.add(raw, took)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: build a tiny offline one)")
    ap.add_argument("--quick", action="store_true", help="fewer requests of each kind and smaller large images")
    ap.add_argument("--large-side", type=int, help="side of the large valid images (default 6000, 3000 with --quick)")
    ap.add_argument("--large", type=int, help="how many large images at once (default 6, 3 with --quick)")
    ap.add_argument("--stalled", type=int, default=200, help="connections held stalled at once")
    ap.add_argument("--max-concurrency", type=int, default=4, help="the server's --max-concurrency (its default, 4)")
    ap.add_argument("--max-pixels-in-flight", type=int,
                    help="the server's pixel budget (default its own, 80 Mpx; 10**9 is as good as none)")
    args = ap.parse_args(argv)
    n = 10 if args.quick else 40
    side = args.large_side or (3000 if args.quick else 6000)
    n_large = args.large or (3 if args.quick else 6)

    with tempfile.TemporaryDirectory() as tmp:
        t_build = time.monotonic()
        model = Path(args.model) if args.model else build_model(Path(tmp))
        t_build = time.monotonic() - t_build
        port = free_port()
        proc = start_server(model, port, args.max_concurrency, args.max_pixels_in_flight)
        try:
            small = jpeg(320, seed=1)
            for _ in range(3):  # warm-up, then the resting RSS
                exchange(port, head(length=len(multipart(small))) + multipart(small), 60)
            time.sleep(0.5)
            rest = rss_kib(proc.pid)
            valid = ValidClient(port, small)
            valid.start()
            t0 = time.monotonic()
            groups = [
                run_many(Group("huge Content-Length + Expect: 100-continue"), n,
                         lambda: exchange(port, head(expect=True), 10)),
                run_many(Group("huge Content-Length, no Expect"), n, lambda: exchange(port, head(), 10)),
                stalled(port, args.stalled),
                run_many(Group("no token, 19 MB body sent"), max(4, n // 4),
                         lambda: exchange(port, head(length=19_000_000, auth=False), 20, body=b"\0" * 19_000_000),
                         workers=4),
                run_many(Group("malformed request line / header"), n,
                         lambda: exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"
                                          if os.urandom(1)[0] % 2 else b"\x16\x03\x01 not http\r\n\r\n", 10)),
            ]
            big = multipart(jpeg(side, seed=2), "large.jpg")
            groups.append(run_many(Group(f"{n_large} concurrent {side}x{side} JPEGs ({len(big) / 1e6:.1f} MB)"),
                                   n_large, lambda: exchange(port, head(length=len(big)) + big, 180), workers=n_large))
            load_s = time.monotonic() - t0
            valid.stop.set()
            valid.join(timeout=60)
            groups.append(valid.group)
            peak = rss_kib(proc.pid, "VmHWM")
            time.sleep(2)
            after = rss_kib(proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nfmmc serve under abuse ({os.cpu_count()} CPU cores; model {args.model or 'tiny, built in'} "
          f"{t_build:.0f} s; --max-concurrency {args.max_concurrency}, --read-timeout {READ_TIMEOUT:g}, "
          f"pixel budget {(args.max_pixels_in_flight or 80_000_000) / 1e6:g} Mpx; load {load_s:.0f} s)")
    header = f"{'group':52} {'sent':>5} {'unanswered':>10} {'5xx':>4} {'median s':>9} {'max s':>7}  statuses"
    print(header)
    print("-" * len(header))
    for g in groups:
        med = statistics.median(g.times) if g.times else float("nan")
        top = max(g.times) if g.times else float("nan")
        print(f"{g.name:52} {g.sent:>5} {g.unanswered:>10} {g.errors_5xx:>4} {med:>9.3f} {top:>7.3f}  "
              + " ".join(f"{s}:{c}" for s, c in sorted(g.statuses.items())))
    oversize = groups[0].times + groups[1].times
    abuse = groups[:-2]
    print(f"\nunanswered requests: {sum(g.unanswered for g in groups)}; 5xx answers: {sum(g.errors_5xx for g in abuse)} "
          f"(abuse) + {groups[-2].errors_5xx} (large images) + {groups[-1].errors_5xx} (valid client); "
          f"server alive after the load: {alive}")
    if oversize:
        print(f"declared-oversize request refused in: median {statistics.median(oversize) * 1000:.1f} ms, "
              f"max {max(oversize) * 1000:.1f} ms")
    print(f"server RSS: at rest {rest / 1024:.0f} MiB, peak (VmHWM) {peak / 1024:.0f} MiB "
          f"({peak / max(rest, 1):.2f}x), after the load {after / 1024:.0f} MiB ({after / max(rest, 1):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
