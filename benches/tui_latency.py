#!/usr/bin/env python3
"""Key-to-frame latency of the dashboard under training load, seen from outside.

Runs `vitrine dashboard` in a detached tmux session (120x36), starts training from
it (`t`, which keeps both cores busy), opens the Triplets tab (scoring runs in the
background), then switches between the Dataset and Triplets tabs N times: each key is
timed from `tmux send-keys` until `capture-pane` shows the new tab. On quit the
dashboard logs its own key->frame figures (key event read to frame drawn) to
RUN/vitrine.log; both are printed.

    python3 benches/tui_latency.py target/release/vitrine [KEYS] [RAW.json]

RAW.json, when given, receives the outside samples (ms) to pool over runs. Needs
tmux and a built binary. Only the standard library.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/vitrine")
KEYS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SOCKET = f"vitrine-latency-{os.getpid()}"
TABS = {"2": "Splits", "3": "anchor · consumer"}

CONFIG = """[model]
image_size = 64
dropout = 0.0
[train]
batch = 16
epochs = 1000
device = "cpu"
checkpoint_every = 20
[ui]
images = "halfblocks"
"""


def tmux(*args):
    return subprocess.run(
        ["tmux", "-L", SOCKET, "-f", "/dev/null", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def screen():
    return tmux("capture-pane", "-p", "-t", "dash").stdout


def wait_for(text, timeout=60.0):
    end = time.monotonic() + timeout
    while True:
        s = screen()
        if text in s:
            return s
        if time.monotonic() > end:
            raise SystemExit(f"`{text}` never appeared; screen:\n{s}")
        time.sleep(0.05)


def pct(xs, q):
    s = sorted(xs)
    return s[round((len(s) - 1) * q)]


def main():
    tmp = tempfile.mkdtemp(prefix="vitrine-latency-")
    try:
        with open(os.path.join(tmp, "c.toml"), "w") as f:
            f.write(CONFIG)
        subprocess.run(
            [BIN, "synth", "--out", "ds", "--items", "200", "--size", "64"],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        script = f"cd {tmp} && {BIN} --config c.toml dashboard --data ds --run run; sleep 30"
        r = tmux("new-session", "-d", "-s", "dash", "-x", "120", "-y", "36", script)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        wait_for("Train")
        tmux("send-keys", "-t", "dash", "t")
        metrics = os.path.join(tmp, "run", "metrics.jsonl")
        end = time.monotonic() + 120
        while True:
            steps = 0
            if os.path.exists(metrics):
                with open(metrics) as f:
                    steps = sum('"event":"step"' in line for line in f)
            if steps >= 5 or time.monotonic() > end:
                break
            time.sleep(0.2)
        tmux("send-keys", "-t", "dash", "3")
        wait_for(TABS["3"])
        time.sleep(2.0)
        load = os.getloadavg()[0]
        outside = []
        current = "3"
        for _ in range(KEYS):
            key = "2" if current == "3" else "3"
            t0 = time.perf_counter()
            tmux("send-keys", "-t", "dash", key)
            while TABS[key] not in screen():
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"tab {key} never showed")
            outside.append((time.perf_counter() - t0) * 1e3)
            current = key
            time.sleep(random.uniform(0.05, 0.15))
        tmux("send-keys", "-t", "dash", "q")
        time.sleep(0.3)
        tmux("send-keys", "-t", "dash", "s")
        time.sleep(1.0)
        log = open(os.path.join(tmp, "run", "vitrine.log"), errors="replace").read()
        inside = re.findall(r"key→frame latency over .*", log)
        print(f"load average at start: {load:.2f}")
        print(
            f"outside (send-keys → capture-pane shows the tab), {len(outside)} keys: "
            f"p50 {pct(outside, 0.5):.1f} ms, p95 {pct(outside, 0.95):.1f} ms, "
            f"max {max(outside):.1f} ms"
        )
        print("inside (the dashboard's log):", inside[-1] if inside else "not logged")
        if len(sys.argv) > 3:
            with open(sys.argv[3], "w") as f:
                json.dump({"load": load, "outside_ms": outside, "inside": inside[-1:]}, f)
    finally:
        tmux("kill-server")
        # The trainer was asked to stop; give it a moment to release the folder.
        time.sleep(2.0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
