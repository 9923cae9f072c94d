"""What one busy core does to each engine: run.py with and without a background
process spinning on one core (`python -c "while True: pass"`), alternated round
by round so that the rest of the machine's load hits both alike, optionally
under several OMP_WAIT_POLICY settings.

    python benchmarks/busy_core.py                         # Small and Large, batch 1, threads 1 and 2, 3 rounds
    python benchmarks/busy_core.py --policies default,passive --rounds 2 --out benchmarks/results/<date>-cpu-busy-core

Writes each run's folder (run.py's files) and summary.md / summary.json to --out:
per engine and thread count, the median ms per image over the rounds without
and with the burner, and the slowdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="small,large")
    p.add_argument("--batch", default="1")
    p.add_argument("--size", default="224")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--engines", default="eager,fast_cl,onnxruntime,openvino")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", default="5")
    p.add_argument("--policies", default="default",
                   help="comma-separated OMP_WAIT_POLICY values to try (default: leave it unset)")
    p.add_argument("--out", default=os.path.join(HERE, "runs", datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
                                                 + "_cpu_busy-core"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for policy in args.policies.split(","):
            for busy in ((False, True) if r % 2 == 0 else (True, False)):  # alternate which goes first
                name = f"r{r}-{policy}-{'busy' if busy else 'idle'}"
                env = dict(os.environ)
                if policy != "default":
                    env["OMP_WAIT_POLICY"] = policy.upper()
                burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--quick", "--repeats", args.repeats,
                           "--arch", args.arch, "--batch", args.batch, "--size", args.size, "--threads", args.threads,
                           "--engines", args.engines, "--out", os.path.join(args.out, name)]
                    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
                    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                finally:
                    if burner:
                        burner.kill()
                        burner.wait()
                with open(os.path.join(args.out, name, "results.json")) as f:
                    data = json.load(f)
                runs.append({"round": r, "policy": policy, "busy": busy, "data": data})
    summarize(runs, args)


def summarize(runs, args):
    env = runs[0]["data"]["environment"]
    table = {}
    for run in runs:
        for row in run["data"]["rows"]:
            key = (row["arch"], row["batch"], row["engine"], row["threads"], run["policy"])
            table.setdefault(key, {False: [], True: []})[run["busy"]].append(row["ms_per_image"])
    others = {busy: [c["load"].get("others_cores") for run in runs if run["busy"] == busy
                     for c in run["data"]["cells"] if c["load"].get("others_cores") is not None] for busy in (False, True)}
    lines = [f"# One busy core: {env['cpu']} ({env.get('cpu_id', '')}), {env['cpu_count']} cores", "",
             f"{len(runs)} runs of `run.py --quick --repeats {args.repeats} --arch {args.arch} --batch {args.batch} "
             f"--size {args.size} --threads {args.threads} --engines {args.engines}`, alternating without and with a "
             "background `python -c \"while True: pass\"`; torch " + env["torch"] + f", {env['date'][:10]}.", "",
             "Other processes' CPU use while the cells were timed (cores, median over cells): "
             f"without the burner {statistics.median(others[False]) if others[False] else float('nan'):.2f}, "
             f"with it {statistics.median(others[True]) if others[True] else float('nan'):.2f}.", "",
             "| model | batch | engine | threads | OMP_WAIT_POLICY | ms/image idle (median of rounds) | "
             "ms/image, one core busy | slowdown |", "|---|---|---|---|---|---|---|---|"]
    summary = []
    for (arch, batch, engine, threads, policy), v in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4],
                                                                                            kv[0][2], kv[0][3])):
        if not v[False] or not v[True]:
            continue
        idle, busy = statistics.median(v[False]), statistics.median(v[True])
        summary.append(dict(arch=arch, batch=batch, engine=engine, threads=threads, policy=policy, idle_ms=idle,
                            busy_ms=busy, slowdown=busy / idle, idle_all=v[False], busy_all=v[True]))
        lines.append(f"| {arch.capitalize()} | {batch} | {engine} | {threads} | {policy} | {idle:.2f} "
                     f"({min(v[False]):.2f}-{max(v[False]):.2f}) | {busy:.2f} ({min(v[True]):.2f}-{max(v[True]):.2f}) | "
                     f"{busy / idle:.2f}x |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"environment": env, "args": vars(args), "rows": summary}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
