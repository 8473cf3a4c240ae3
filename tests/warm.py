"""A warm Python for the suite's command-line runs: `python train.py ARGS` minus the seconds
of importing torch and Lightning, which are most of a short run's time.

Run as a script, this is a server: it imports the heavy libraries once, then for each request
(one JSON line on stdin) forks a child that becomes `python SCRIPT ARGS` in a fresh process
of its own: its argv, working folder, environment, sys.path (the script's folder first, then
PYTHONPATH), stdin from /dev/null and stdout and stderr into files, and the script run as
__main__ through the interpreter's exit (threads joined, atexit handlers, exit status, a
traceback for an uncaught exception) but for its teardown of the modules. The server answers
the child's pid, then its exit status as subprocess reports it (-N for a signal).
`WarmPython.run` is the client's side.
"""

import atexit
import gc
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy

IMPORT_ENV: dict[str, str] = {}  # what importing PRELOAD set in os.environ
PRELOAD = (
    "torch",
    "torchvision.utils",
    "torch.utils.tensorboard",
    "lightning",
    "hydra",
    "omegaconf",
    "tqdm",
    "vaelab.train",
    "vaelab.checkpoints",
    "vaelab.pictures",
    "vaelab.metrics",
)


def serve() -> None:
    # As in a run: the scripts import Lightning once Hydra has given the root logger its
    # handlers, so Lightning's loggers pass their records to it instead of printing them.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    before = dict(os.environ)
    for name in PRELOAD:
        __import__(name)
    root.removeHandler(placeholder)
    IMPORT_ENV.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    # The imported objects out of the garbage collector's sight: a child's full collection
    # would otherwise touch each of them and copy every page of the heap it shares.
    gc.collect()
    gc.freeze()
    requests, replies = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        replies.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            become(**request)  # never returns: the child exits as the script does
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def become(script: str, args: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """Turn this forked child into `python SCRIPT ARGS` run in `cwd` with `env`."""
    import runpy

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update({**env, **IMPORT_ENV})  # and what the imports set, as they would
    random.seed()  # seeded from the system as a new process is, not as the server was
    numpy.random.seed()
    tempfile.tempdir = None  # TMPDIR as this run's environment has it
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(Path(script).parent), *paths, *BASE_PATH]
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)  # as Python prints sys.exit("message")
    except KeyboardInterrupt:
        raise  # Python's own exit, which ends the process by SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    # Python's exit less its teardown of every module (about 0.35 s of torch's in each run):
    # the threads joined, the exit handlers run and the standard streams flushed, in its order.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not stream.closed:
            stream.flush()
    os._exit(status)


class WarmPython:
    """A server started on first use; `run` is `subprocess.run([python, SCRIPT, *ARGS])`."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self.server

    def run(
        self, script: Path, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        server = self.start()
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            request = dict(script=str(script), args=list(args), cwd=str(cwd), env=env)
            server.stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}))
            server.stdin.write("\n")
            server.stdin.flush()
            pid = json.loads(server.stdout.readline())["pid"]
            try:
                returncode = self.wait(server, timeout)
            except subprocess.TimeoutExpired:
                os.kill(pid, 9)
                server.stdout.readline()
                raise
            return subprocess.CompletedProcess(
                [sys.executable, str(script), *args],
                returncode,
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )

    @staticmethod
    def wait(server: subprocess.Popen, timeout: float) -> int:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise subprocess.TimeoutExpired(server.args, timeout)
        return json.loads(server.stdout.readline())["returncode"]

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.stdin.close()
            self.server.wait(timeout=30)


if __name__ == "__main__":
    # sys.path as `python SCRIPT` has it, less the script's folder and PYTHONPATH (set per run)
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    BASE_PATH = sys.path[1 + len(given) :]
    serve()
