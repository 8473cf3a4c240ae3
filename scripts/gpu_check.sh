#!/usr/bin/env bash
# The GPU paths that no CPU test reaches, on a GPU machine without network: the GPU-only
# tests, the default run on the GPU, a sweep, bf16, torch.compile, model=conv_vae, the speed
# harness, a profile of training steps, test/nll_iw with K = 5000, then the whole test suite.
#
#   bash scripts/gpu_check.sh                  # on the GPU machine, with its own python3
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh  # the same steps on this CPU, shrunk
#   GPU_CHECK_STEPS="python data install warmup suite" bash scripts/gpu_check.sh  # a rerun of
#       some steps (the first four set the machine up; the others' names are below)
#
# Beside the tree, git-ignored, it needs .wheels/ (pure-Python wheels of what the machine
# lacks: hydra-core, omegaconf, antlr4-python3-runtime 4.9.3, hydra-joblib-launcher,
# hydra-submitit-launcher, submitit, cloudpickle) and .mnist/MNIST/raw/*.gz (MNIST gzipped):
#
#   pip download --no-deps -d .wheels hydra-core omegaconf hydra-joblib-launcher \
#       hydra-submitit-launcher submitit cloudpickle antlr4-python3-runtime==4.9.3
#   pip wheel --no-deps -w .wheels .wheels/antlr4-python3-runtime-4.9.3.tar.gz  # an sdist only
#   for f in data/MNIST/raw/*-ubyte; do gzip -9cn "$f" > .mnist/MNIST/raw/${f##*/}.gz; done
#
# Writes to $OUT (default ./gpu_check_out), rewritten as each step ends, so that a hang or a
# kill loses one step: summary.txt (a line per step: status, exit code, seconds, figures),
# steps.log (every step's output, each line prefixed with the step's name) and runs.tar.gz
# (the small results: metrics.json files, evaluations, the speed tables, the profile; no
# checkpoints). Every step runs under `timeout` with its own limit, never longer than what is
# left of GPU_CHECK_BUDGET (420 s), and reads /dev/null as stdin; a failing step stops nothing.
# Limits in seconds: python 45, data 20, install 60, warmup 60, gpu_tests 45, default 75,
# speed 100, profile 40, variants 150, each cut so as to leave 120 s to the last three, which
# run side by side: sweep 75, evaluate 75 and the suite, which has whatever is left.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
: >"$OUT/steps.log"

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET:-1800}; else BUDGET=${GPU_CHECK_BUDGET:-420}; fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=10 # seconds kept for the last packing
KEEP=120   # seconds that the steps before the last three leave to them (the suite above all)
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
RUNS=$WORK/runs    # the runs' folders (checkpoints stay here)
RES=$WORK/results  # what runs.tar.gz holds besides the runs' small files
DATA=$WORK/data    # MNIST/raw/, unpacked from .mnist
LOGS=$WORK/logs
HELP=$WORK/gpu_check_helpers.py
mkdir -p "$RUNS" "$RES" "$DATA" "$LOGS" "$WORK/mpl" "$WORK/extra"

# Nothing may wait for the network, a terminal or a cache build that has no limit: no index
# for pip, downloads refused at once by a proxy that is not there (MNIST is found locally),
# loggers and hubs offline, matplotlib's font cache built once in `warmup`, under its limit.
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1 MPLBACKEND=Agg MPLCONFIGDIR=$WORK/mpl \
  WANDB_MODE=disabled WANDB_SILENT=true HYDRA_FULL_ERROR=1 TQDM_DISABLE=1 \
  NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  DO_NOT_TRACK=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
  PIP_CACHE_DIR=$WORK/pip HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
  http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 GLOO_SOCKET_IFNAME=lo \
  TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TRITON_CACHE_DIR=$WORK/triton TORCH_HOME=$WORK/torch \
  VAELAB_DATA_DIR=$DATA GPU_CHECK_ROOT=$ROOT

if [ "$DRY" = 1 ]; then # the CPU, 1/6 of MNIST, 2 epochs, small K; what needs CUDA is left out
  HW=cpu DEV=cpu K=5 EPOCHS=2 SWEEP_EPOCHS=1 SPEED_EPOCHS=2 SPEED_VAL=5000 SUITE_WORKERS=0
  TRAIN_DATA=$WORK/small SCALE=3 PROFILE=(warm=5 timed=5 profiled=3)
  SPEED_VARIANTS=()
  SUITE=(${GPU_CHECK_SUITE:-tests/unit/test_losses.py})
else
  HW=gpu DEV=cuda K=5000 EPOCHS=10 SWEEP_EPOCHS=5 SPEED_EPOCHS=5 SPEED_VAL=5000
  SUITE_WORKERS=${GPU_CHECK_WORKERS:-8}
  TRAIN_DATA=$DATA SCALE=1 PROFILE=(warm=30 timed=30 profiled=10)
  SPEED_VARIANTS=(project_bf16 project_conv_vae project_compile)
  SUITE=(${GPU_CHECK_SUITE:-tests})
fi
GPU_TESTS=(
  "tests/unit/test_config.py::test_every_option_builds[hardware-gpu]"
  "tests/unit/test_config.py::test_every_option_builds[hardware-multi_gpu]"
  "tests/unit/test_config.py::test_every_option_builds[hardware-multi_node]"
)

locked() { # COMMAND...: with the output files locked, as steps may end at the same time
  if command -v flock >/dev/null; then flock "$OUT/steps.log" "$@"; else "$@"; fi
}

say() { # a progress line, on the console and in steps.log
  echo "$*"
  locked bash -c 'echo "$1" >>"$2"' _ "$*" "$OUT/steps.log"
}

py() { # helper subcommand with its arguments: its last line (a step's figures)
  timeout --kill-after=5 60 python3 -u "$HELP" "$@" </dev/null 2>&1 | tail -n 1
}

pack() { # runs.tar.gz: the small files of the runs and results, never checkpoints
  (cd "$WORK" && find runs results -type f ! -name '*.ckpt' ! -name 'events.out.tfevents.*' \
    -size -4M 2>/dev/null | tar -czf "$WORK/runs.tar.gz" -T - 2>/dev/null) &&
    cp "$WORK/runs.tar.gz" "$OUT/runs.tar.gz.part" && mv "$OUT/runs.tar.gz.part" "$OUT/runs.tar.gz"
}

# FIG='shell code' step NAME CAP COMMAND...: run COMMAND under `timeout` for CAP seconds, or
# what is left of the budget if less, with stdin from /dev/null and its output in a log; add
# the log to steps.log, and a line to summary.txt with the figures that FIG prints.
step() {
  local name=$1 cap=$(($2 * SCALE)) limit left rc t0 t1 secs status figures=""
  shift 2
  left=$((DEADLINE - $(date +%s) - RESERVE - KEEP))
  limit=$((cap < left ? cap : left))
  local log=$LOGS/$name.log
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
    say "=== $name: not asked for (GPU_CHECK_STEPS=$GPU_CHECK_STEPS)"
    locked bash -c 'printf "%-16s %-8s exit %-4s %7s  %s\n" "$1" skipped - - "not asked for" >>"$2"' \
      _ "$name" "$OUT/summary.txt"
    return 0
  fi
  if [ "$limit" -lt 5 ]; then
    say "=== $name: skipped at $(date +%s): $left s left of the $BUDGET s budget"
    locked bash -c 'printf "%-16s %-8s exit %-4s %7s  %s\n" "$1" skipped - - "no time left" >>"$2"' \
      _ "$name" "$OUT/summary.txt"
    return 0
  fi
  say "=== $name: start $(date +%s) (+$(($(date +%s) - START)) s), limit $limit s: $*"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" </dev/null >"$log" 2>&1
  rc=$?
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  case $rc in
    0) status=ok ;;
    124) status=TIMEOUT ;;
    137) status=KILLED ;;
    *) status=FAILED ;;
  esac
  locked bash -c 'sed "s/^/[$1] /" "$2" >>"$3"' _ "$name" "$log" "$OUT/steps.log"
  say "=== $name: end $(date +%s) (+$(($(date +%s) - START)) s), $status, exit $rc, $secs s"
  if [ -n "${FIG:-}" ]; then figures=$(eval "$FIG" 2>&1 | tail -n 1); fi
  locked bash -c 'printf "%-16s %-8s exit %-4s %6s s  %s\n" "$1" "$2" "$3" "$4" "$5" >>"$6"' \
    _ "$name" "$status" "$rc" "$secs" "$figures" "$OUT/summary.txt"
  cp "$log" "$RES/logs-$name.txt" 2>/dev/null
  return 0
}

cat >"$HELP" <<'PY'
"""Helpers of scripts/gpu_check.sh, written by it: a step's figures as one line, the speed
harness (tests/benchmarks/speed.py) one variant at a time, imports timed one by one."""

import copy
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(os.environ["GPU_CHECK_ROOT"])


def speed_module():
    spec = importlib.util.spec_from_file_location("speed", ROOT / "tests/benchmarks/speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def warmup(data_dir):
    """Each import that a first command makes, timed, so that a hang shows where it is."""
    start = time.perf_counter()

    def mark(what):
        print(f"{time.perf_counter() - start:6.1f} s  {what}", flush=True)

    print(sys.executable, sys.version.split()[0], flush=True)
    import torch

    mark(f"import torch {torch.__version__} (CUDA {torch.version.cuda})")
    if torch.cuda.is_available():
        x = torch.randn(1024, 1024, device="cuda")
        (x @ x).sum().item()
        mark(f"CUDA: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
             f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    else:
        mark("no CUDA device")
    for name in ["torchvision", "matplotlib.pyplot", "matplotlib.font_manager", "tensorboard",
                 "torch.utils.tensorboard", "lightning", "hydra", "omegaconf", "vaelab.train"]:
        module = importlib.import_module(name)
        mark(f"import {name} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    mark("Hydra launchers: " + ", ".join(c.__name__ for c in Plugins.instance().discover(Launcher)))
    present = {}
    for name in ["mlflow", "wandb", "optuna", "submitit", "joblib", "xdist", "pytest_timeout", "triton"]:
        try:
            present[name] = importlib.util.find_spec(name) is not None
        except ImportError:
            present[name] = False
    mark(f"optional packages: {present}")
    import shutil

    mark(f"C compiler for triton: {shutil.which('cc') or shutil.which('gcc') or 'none'}")
    from vaelab.datasets import MNIST

    raw = MNIST.raw_dir(data_dir)
    MNIST.verify(raw)
    images, _ = MNIST.load(raw, "train")
    mark(f"MNIST in {raw}: {tuple(images.shape)} training images, checked")
    print(f"ok: imports and CUDA in {time.perf_counter() - start:.1f} s")


def seconds_per_epoch(run_dir):
    """The median time between epochs' ends, from the run's TensorBoard events."""
    try:
        result = speed_module()._read_project_run(Path(run_dir))
        return statistics.median(result["epoch_seconds"])
    except Exception:
        return None


def run(run_dir, reference=None):
    """A train.py run: status, test/loss (against the CPU's), epochs, wall time, s/epoch."""
    summary = json.loads((Path(run_dir) / "metrics.json").read_text())
    metrics, parts = summary.get("metrics", {}), [summary["status"]]
    if "test/loss" in metrics:
        parts.append(f"test/loss {metrics['test/loss']:.2f}")
        if reference:
            difference = metrics["test/loss"] - float(reference)
            parts.append(f"({difference:+.2f} against the CPU's {reference}; want within 0.5)")
    parts += [f"{summary.get('epochs')} epochs", f"wall {summary['wall_seconds']:.1f} s"]
    if (epoch := seconds_per_epoch(run_dir)) is not None:
        parts.append(f"{epoch:.2f} s/epoch")
    if summary.get("reason"):
        parts.append(f"reason: {summary['reason'][:300]}")
    print(", ".join(parts))


def sweep(sweep_dir):
    """A sweep: each job's status and test/loss, then the count of completed jobs."""
    rows, done = [], 0
    for job in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        try:
            summary = json.loads((job / "metrics.json").read_text())
        except FileNotFoundError:
            rows.append(f"{job.name}: no metrics.json")
            continue
        done += summary["status"] == "completed"
        loss = summary.get("metrics", {}).get("test/loss")
        epoch = seconds_per_epoch(job)
        swept = [o for o in summary["overrides"] if o.startswith("model.latent_size")]
        rows.append(f"{' '.join(swept)}: {summary['status']}"
                    + (f" {loss:.2f}" if loss is not None else "")
                    + (f" ({epoch:.2f} s/epoch)" if epoch else ""))
    print(f"{done}/{len(rows)} completed; " + "; ".join(rows))


def evaluations(folder):
    """scripts/evaluate.py's results, one JSON file each: test/nll_iw and how cuda and cpu agree."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        evaluation = json.loads(path.read_text())
        found[path.stem] = evaluation["metrics"]
        found[path.stem]["K"] = evaluation["iw_samples"]
    parts = [f"{name}: nll_iw {m['test/nll_iw']:.3f} (se {m['test/nll_iw_se']:.3f}, K={m['K']}), "
             f"test/loss {m['test/loss']:.2f}, active {m['test/active_units']:.0f}"
             for name, m in found.items()]
    if "k100_cuda" in found and "k100_cpu" in found:
        gap = found["k100_cuda"]["test/nll_iw"] - found["k100_cpu"]["test/nll_iw"]
        parts.append(f"cuda - cpu, the same noise: {gap:+.5f} nats")
    print("; ".join(parts) + " (CPU, docs/results.md: 101.03 at K=1000, 105.99 ELBO)" if parts else "none")


def pytest_result(log):
    """The last line of pytest's counts, and the first failures' names."""
    lines = Path(log).read_text(errors="replace").splitlines()
    words = (" passed", " failed", " error", " skipped", " deselected", "no tests ran")
    counts = [x.strip("= ") for x in lines if x.startswith("=") and any(w in x for w in words)]
    failed = [x.split()[1] for x in lines if x.startswith(("FAILED ", "ERROR "))]
    done = sum(" PASSED " in x or " FAILED " in x or " SKIPPED " in x or " ERROR " in x for x in lines)
    text = counts[-1] if counts else f"no summary (cut off?): {done} tests reported"
    print(text + (f"; failed: {', '.join(failed[:8])}" if failed else ""))


def speed(out, device, epochs, val_size, data_dir, *variants):
    """The harness's variants, each in its own process as speed.py runs them, one repeat;
    results merged into OUT/speed.json after each, so that a cut leaves the earlier ones."""
    harness = speed_module()
    # A project variant of the harness: the default config with model=conv_vae.
    harness.PROJECT_VARIANTS["project_conv_vae"] = ["model=conv_vae"]
    out = Path(out)
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    args = Namespace(data_dir=str(Path(data_dir).resolve()), epochs=int(epochs), repeats=1,
                     val_size=int(val_size), device=device, out=str(out), quick=False, worker=None)
    path = out / "speed.json"
    state = json.loads(path.read_text()) if path.exists() else {"runs": {}, "failed": {}}
    for variant in variants:
        print(f"{variant}: start {time.time():.0f}", flush=True)
        try:
            state["runs"][variant] = harness.run(variant, copy.copy(args), work)
            state["failed"].pop(variant, None)
        except SystemExit as err:  # the harness's way to say that a variant failed
            state["failed"][variant] = str(err)
        except Exception as err:
            state["failed"][variant] = f"{type(err).__name__}: {err}"
        print(f"{variant}: end {time.time():.0f}", state["runs"].get(variant) or state["failed"][variant],
              flush=True)
        state.update(tables(harness, state["runs"], args))
        path.write_text(json.dumps(state, indent=2))
        (out / "speed.md").write_text(state["markdown"])
    print(state["line"])
    sys.exit(any(variant in state["failed"] for variant in variants))


def tables(harness, runs, args):
    rows = {}
    for name, result in runs.items():
        if "epoch_seconds" not in result:
            continue
        skip = 0 if name in harness.PROJECT_VARIANTS else 1  # as speed.summarize counts
        epochs = result["epoch_seconds"][skip:] or result["epoch_seconds"]
        rows[name] = {"seconds_per_epoch": statistics.median(epochs) if epochs else float("nan"),
                      "startup_seconds": result.get("startup_seconds", float("nan")),
                      "wall_seconds": result["wall"], "test_loss": result["test_loss"],
                      "peak_rss_mib": result["peak_rss_mib"]}
    ratios = {}

    def ratio(name, a, b, key):
        if a in rows and b in rows:
            ratios[name] = rows[a][key] / rows[b][key]

    ratio("project/bare s/epoch", "project", "bare", "seconds_per_epoch")
    ratio("project/bare wall", "project", "bare", "wall_seconds")
    ratio("project/floor s/epoch", "project", "floor", "seconds_per_epoch")
    ratio("project/floor wall", "project", "floor", "wall_seconds")
    ratio("bf16/fp32 s/epoch", "project_bf16", "project", "seconds_per_epoch")
    ratio("compile/eager s/epoch", "project_compile", "project", "seconds_per_epoch")
    for name in ("project_bf16", "project_compile"):
        if name in rows and "project" in rows:
            ratios[f"{name} - project test loss"] = rows[name]["test_loss"] - rows["project"]["test_loss"]
    cost = runs.get("step_cost")
    if cost:
        ratios["Lightning/bare step (in turns)"] = cost["lightning_ms"] / cost["bare_ms"]
    lines = [f"device {args.device}, {args.epochs} epochs, val_size {args.val_size}, one repeat", "",
             "| variant | s/epoch | start-up s | wall s | peak MiB | test loss |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['seconds_per_epoch']:.3f} | {r['startup_seconds']:.2f} | "
              f"{r['wall_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['test_loss']:.2f} |"
              for n, r in rows.items()]
    lines += ["", *(f"- {k}: {v:.3f}" for k, v in ratios.items())]
    if cost:
        lines.append(f"- per step, in turns ({cost['steps']} each): Lightning {cost['lightning_ms']:.3f} ms, "
                     f"bare {cost['bare_ms']:.3f} ms")
    slow = [k for k in ("project/bare s/epoch", "Lightning/bare step (in turns)") if ratios.get(k, 2) > 1.5]
    line = "; ".join([*(f"{n} {r['seconds_per_epoch']:.3f} s/epoch, loss {r['test_loss']:.2f}"
                        for n, r in rows.items()), *(f"{k} {v:.2f}" for k, v in ratios.items())])
    return {"rows": rows, "ratios": ratios, "markdown": "\n".join(lines) + "\n",
            "line": line or "no variant finished", "profile_wanted": slow}


def speed_line(speed_json, *variants):
    """The figures of these variants (all if none named) and the ratios as one line, with
    the variants that failed."""
    state = json.loads(Path(speed_json).read_text())
    rows = {n: r for n, r in state["rows"].items() if not variants or n in variants}
    parts = [f"{n} {r['seconds_per_epoch']:.3f} s/epoch, wall {r['wall_seconds']:.1f} s, "
             f"loss {r['test_loss']:.2f}" for n, r in rows.items()]
    parts += [f"{k} {v:.2f}" for k, v in state["ratios"].items()]
    if (cost := state["runs"].get("step_cost")) and (not variants or "step_cost" in variants):
        parts.append(f"per step in turns: Lightning {cost['lightning_ms']:.3f} ms, bare "
                     f"{cost['bare_ms']:.3f} ms")
    parts += [f"{n} FAILED: {why[:200]}" for n, why in state["failed"].items()
              if not variants or n in variants]
    print("; ".join(parts) or "nothing measured")


def profile_wanted(speed_json):
    """Exit 0 if the project's step costs over 1.5 times the bare one's (or it is unknown)."""
    try:
        wanted = json.loads(Path(speed_json).read_text())["profile_wanted"]
    except Exception as err:
        print(f"profile: no speed figures ({type(err).__name__}), so profile anyway")
        return
    print(f"profile: {'wanted, ' + ', '.join(wanted) + ' over 1.5' if wanted else 'not needed'}")
    sys.exit(0 if wanted else 1)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    globals()[command](*arguments)
PY

cat >"$WORK/extra/gpu_check_profile.py" <<'PY'
"""A callback for scripts/gpu_check.sh: times training steps, then profiles a few of them."""

import time
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

COUNTED = ["cudaLaunchKernel", "cudaStreamSynchronize", "cudaDeviceSynchronize",
           "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense"]


class StepProfile(L.Callback):
    """Training steps `warm` to `warm + timed` timed, the next `profiled` ones (fewer if the
    epoch ends first) under torch.profiler; the tables go to `out`/profile.txt."""

    def __init__(self, out: str, warm: int = 30, timed: int = 30, profiled: int = 10) -> None:
        self.out, self.warm, self.timed, self.profiled = Path(out), warm, timed, profiled
        self.marks, self.profiler, self.done = {}, None, 0

    def sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        first = self.warm + self.timed
        if batch_idx in (self.warm, first):
            self.sync(pl_module)
            self.marks[batch_idx] = time.perf_counter()
        if batch_idx == first:
            activities = [ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
        elif self.profiler is not None and self.done == self.profiled:
            self.stop(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.profiler is not None:
            self.done += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.profiler is not None:  # an epoch of fewer batches than asked for
            self.stop(pl_module)

    def stop(self, pl_module: L.LightningModule) -> None:
        self.sync(pl_module)
        end = time.perf_counter()
        self.profiler.__exit__(None, None, None)
        first, steps = self.warm + self.timed, max(self.done, 1)
        timed = (self.marks[first] - self.marks[self.warm]) / self.timed * 1e3
        profiled = (end - self.marks[first]) / steps * 1e3
        events = self.profiler.key_averages()
        self.profiler = None
        calls = {e.key: e.count / steps for e in events}
        head = [f"device {pl_module.device}: {timed:.3f} ms per training step (steps {self.warm}-{first}, "
                f"no profiler), {profiled:.3f} ms under the profiler ({steps} steps from {first})",
                "per step: " + ", ".join(f"{k} {calls.get(k, 0):.1f}" for k in COUNTED)]
        keys = ["self_cpu_time_total"]
        if pl_module.device.type == "cuda":
            keys.append("self_device_time_total")
        tables = []
        for key in keys:
            try:
                tables.append(f"sorted by {key}:\n" + events.table(sort_by=key, row_limit=35))
            except Exception as err:  # torch before 2.4 calls it self_cuda_time_total
                tables.append(f"sorted by {key}: {type(err).__name__}: {err}")
                tables.append("sorted by self_cuda_time_total:\n"
                              + events.table(sort_by="self_cuda_time_total", row_limit=35))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile.txt").write_text("\n".join(head) + "\n\n" + "\n\n".join(tables))
        print("\n".join(head), flush=True)
PY

{
  echo "gpu_check: started $(date -u '+%Y-%m-%d %H:%M:%S') UTC on $(hostname), dry=$DRY, budget $BUDGET s, work $WORK"
  echo "step             status   exit    seconds  figures"
} >>"$OUT/summary.txt"

# 1. The machine's own python3, and what it has.
FIG='sed -n "1,2p" "$log" | paste -sd " " -' step python 45 bash -c '
  which python3; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
  readlink -f "$(which python3)"; python3 -c "import sys; print(sys.prefix, sys.version)"
  python3 -m pip --version; timeout 15 nvidia-smi || true; nproc; free -g; df -h /tmp .'

# 2. MNIST from .mnist/*.gz into torchvision's layout.
FIG='tail -n 1 "$log"' step data 20 bash -c '
  set -e; mkdir -p "$1/MNIST/raw"
  for f in .mnist/MNIST/raw/*.gz; do gunzip -c "$f" >"$1/MNIST/raw/$(basename "$f" .gz)"; done
  ls -l "$1/MNIST/raw"
  if [ "$2" = 1 ]; then # the dry run: the first 10,000 training and 1,000 test images
    python3 - "$1/MNIST/raw" "$3/MNIST/raw" <<"PY"
import struct, sys
from pathlib import Path
source, target = map(Path, sys.argv[1:])
target.mkdir(parents=True, exist_ok=True)
for name in source.iterdir():
    data = name.read_bytes()
    ndim, keep = data[3], 10000 if name.name.startswith("train") else 1000
    dims = (keep, *struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])[1:])
    size = keep * (784 if ndim == 3 else 1)
    head = data[:4] + struct.pack(f">{ndim}I", *dims)
    (target / name.name).write_bytes(head + data[4 + 4 * ndim : 4 + 4 * ndim + size])
PY
  fi
  echo "$(ls "$1/MNIST/raw" | wc -l) files in $1/MNIST/raw"' _ "$DATA" "$DRY" "$WORK/small"

# 3. hydra-core and the rest from .wheels, then the project: into python3's environment with
# pip, else into a folder on PYTHONPATH (pip --target, or the wheels unzipped without pip).
cat >"$WORK/install.sh" <<'SH'
set -u
packages=(hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher
  submitit cloudpickle)
pylib=$WORK/pylib paths=()
ls .wheels
works() { PYTHONPATH=$(IFS=:; echo "${paths[*]:-}")${PYTHONPATH:+:$PYTHONPATH} python3 -c "$1"; }
if python3 -m pip --version; then
  python3 -m pip install --no-deps --no-index --find-links .wheels "${packages[@]}" ||
    { python3 -m pip install --no-deps --no-index --find-links .wheels --target "$pylib" \
      "${packages[@]}" && paths+=("$pylib"); }
fi
if ! works "import hydra, omegaconf, antlr4, submitit"; then
  echo "no pip, or pip failed: the wheels unzipped into $pylib"
  for w in .wheels/*.whl; do python3 -m zipfile -e "$w" "$pylib"; done
  paths+=("$pylib")
fi
if python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip install --no-deps --no-index --no-build-isolation -e . || echo "no editable install"
fi
if ! works "import vaelab, pathlib, sys; sys.exit(pathlib.Path(vaelab.__file__).parent != pathlib.Path('src/vaelab').resolve())"; then
  echo "vaelab from src/ on PYTHONPATH"
  paths=("$PWD/src" "${paths[@]}")
fi
if [ ${#paths[@]} -gt 0 ]; then
  echo "export PYTHONPATH=$(IFS=:; echo "${paths[*]}")\${PYTHONPATH:+:\$PYTHONPATH}" >"$WORK/env.sh"
  cat "$WORK/env.sh"
fi
works "import hydra, omegaconf, antlr4, vaelab; print('hydra', hydra.__version__, hydra.__file__); print('omegaconf', omegaconf.__version__); print('vaelab', vaelab.__file__)"
SH
FIG='grep -E "^(hydra|vaelab|export|no pip) " "$log" | paste -sd " " -' \
  step install 60 env WORK="$WORK" bash "$WORK/install.sh"
# shellcheck disable=SC1091
[ -f "$WORK/env.sh" ] && . "$WORK/env.sh"

# 4. Every import of a first command, timed (matplotlib builds its font cache here), and CUDA.
FIG='tail -n 1 "$log"' step warmup 60 python3 -u "$HELP" warmup "$DATA"
pack

# 5. The three GPU-only tests (on a CPU they skip).
TESTS_ENV=(env -u HYDRA_FULL_ERROR -u VAELAB_DATA_DIR -u TQDM_DISABLE)
PYTEST=(python3 -u -m pytest -o addopts= -p no:cacheprovider -ra)
FIG='py pytest_result "$log"' step gpu_tests 45 "${TESTS_ENV[@]}" "${PYTEST[@]}" -v "${GPU_TESTS[@]}"
pack

# 6. The default run on the GPU, alone: 10 epochs, seed 0; the CPU's test/loss is 106.05.
FIG='py run "$RUNS/default" 106.05' step default 75 python3 -u train.py hardware=$HW \
  trainer.max_epochs=$EPOCHS data.data_dir="$TRAIN_DATA" hydra.run.dir="$RUNS/default"
pack

# 7. The speed harness, alone: the project against the bare loops, 5 epochs each in its own
# process, then Lightning's steps and bare ones in turns in one process.
FIG='py speed_line "$RES/speed/speed.json" project bare floor step_cost' \
  step speed 100 python3 -u "$HELP" speed "$RES/speed" \
  $DEV $SPEED_EPOCHS $SPEED_VAL "$TRAIN_DATA" project bare floor step_cost
pack

# 8. A profile of training steps of the project as a user runs it, if its step costs more
# than 1.5 times the bare one (always in the dry run, to try the profiler).
if [ "$DRY" = 1 ] || timeout 30 python3 "$HELP" profile_wanted "$RES/speed/speed.json" </dev/null; then
  FIG='grep -m 1 "ms per training step" "$log"' step profile 40 \
    env PYTHONPATH="$WORK/extra${PYTHONPATH:+:$PYTHONPATH}" python3 -u train.py hardware=$HW \
    trainer.max_epochs=1 trainer.limit_train_batches=80 trainer.limit_val_batches=2 \
    trainer.limit_test_batches=2 print_config=false data.data_dir="$TRAIN_DATA" \
    hydra.run.dir="$RUNS/profile" +callbacks.step_profile._target_=gpu_check_profile.StepProfile \
    +callbacks.step_profile.out="$RES/profile" "${PROFILE[@]/#/+callbacks.step_profile.}"
  pack
fi

# 9. bf16-mixed, model=conv_vae and torch.compile, 5 epochs each, alone, as the harness runs
# the project (each a variant of the default config; fp32's figures are the `project` row).
if [ ${#SPEED_VARIANTS[@]} -gt 0 ]; then
  FIG='py speed_line "$RES/speed/speed.json" "${SPEED_VARIANTS[@]}"' \
    step variants 150 python3 -u "$HELP" speed \
    "$RES/speed" $DEV $SPEED_EPOCHS $SPEED_VAL "$TRAIN_DATA" "${SPEED_VARIANTS[@]}"
  pack
fi

# 10. A sweep and its summary; test/nll_iw with K = 5000 on the default run's best checkpoint,
# and with K = 100 on cuda and on the cpu (the same noise: the same figures, to rounding).
cat >"$WORK/evaluate.sh" <<'SH'
set -u
mkdir -p "$RES/eval"
evaluate() { # NAME DEVICE K
  python3 -u scripts/evaluate.py run_dir="$RUNS/default" data.data_dir="$TRAIN_DATA" device="$2" \
    iw_samples="$3" chunk_size=500 batch_size=500 &&
    cp "$RUNS"/default/evaluations/epoch*.json "$RES/eval/$1.json" # the best checkpoint's
}
start=$(date +%s)
evaluate "k$K" "$DEV" "$K" || exit 1
echo "evaluate K=$K: $(($(date +%s) - start)) s"
if [ "$DEV" = cuda ]; then evaluate k100_cuda cuda 100 && evaluate k100_cpu cpu 100; fi
SH
cat >"$WORK/sweep.sh" <<'SH'
set -u
python3 -u train.py -m hardware=$HW model.latent_size=2,10,20 trainer.max_epochs=$SWEEP_EPOCHS \
  data.data_dir="$TRAIN_DATA" hydra.sweep.dir="$RUNS/sweep"
status=$?
python3 -u scripts/summarize.py "$RUNS/sweep" || status=1
cat "$RUNS/sweep/summary.md"
exit $status
SH
export WORK RUNS RES TRAIN_DATA HW DEV K SWEEP_EPOCHS
# 11. The whole suite, with all the time that is left (with a GPU, hardware=auto trains there),
# beside the sweep and the evaluations.
XDIST=(-n "$SUITE_WORKERS")
[ "$SUITE_WORKERS" != 0 ] && XDIST+=(--dist loadfile)
timeout 60 python3 -m pytest --help </dev/null 2>/dev/null | grep -q -- --no-loadscope-reorder &&
  XDIST+=(--no-loadscope-reorder) # an option of newer pytest-xdist, which pyproject.toml gives
TIMEOUT=()
timeout 30 python3 -c "import pytest_timeout" </dev/null 2>/dev/null && TIMEOUT=(--timeout=150)
sweep_step() { FIG='py sweep "$RUNS/sweep"' step sweep 75 bash "$WORK/sweep.sh"; }
evaluate_step() { FIG='py evaluations "$RES/eval"' step evaluate 75 bash "$WORK/evaluate.sh"; }
suite_step() {
  FIG='py pytest_result "$log"' step suite 400 "${TESTS_ENV[@]}" "${PYTEST[@]}" -v "${XDIST[@]}" \
    "${TIMEOUT[@]}" --junitxml="$RES/suite.xml" "${SUITE[@]}"
}
KEEP=0
if [ "$DRY" = 1 ]; then
  sweep_step
  evaluate_step
  suite_step
else # side by side: none of them times anything that matters, and 16 cores and the GPU
  # have room for all three (the suite takes 8 cores)
  sweep_step &
  evaluate_step &
  suite_step &
  wait
fi

say "=== gpu_check: done at $(date +%s), $(($(date +%s) - START)) s"
echo "done in $(($(date +%s) - START)) s of the $BUDGET s budget" >>"$OUT/summary.txt"
pack
cat "$OUT/summary.txt"
