"""The run folder's lock (vaelab.runs.claim_folder)."""

import textwrap
from pathlib import Path

from ..conftest import ROOT, run_python

# Claims a folder, forks a child that lives on (as DataLoader workers do), then dies by SIGKILL.
CLAIM_FORK_DIE = """
import os, signal, sys, time
from omegaconf import OmegaConf
from vaelab.runs import claim_folder

claim_folder(OmegaConf.create({"output_dir": sys.argv[1], "resume": True, "overwrite": False}))
if os.fork() == 0:  # the child outlives its parent, holding what it inherited
    time.sleep(30)
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""

CLAIM = """
import sys
from omegaconf import OmegaConf
from vaelab.runs import claim_folder

claim_folder(OmegaConf.create({"output_dir": sys.argv[1], "resume": True, "overwrite": False}))
print("claimed")
"""


def test_a_killed_runs_children_do_not_hold_its_folder(tmp_path: Path) -> None:
    """A run killed while its DataLoader workers live on: the resume that follows at once
    takes the folder (with flock, the workers held the lock until they noticed)."""
    scripts = {}
    for name, code in (("die", CLAIM_FORK_DIE), ("claim", CLAIM)):
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(textwrap.dedent(code))
    folder = tmp_path / "run"
    died = run_python(scripts["die"], str(folder), cwd=ROOT, env=None)
    assert died.returncode != 0 and (folder / ".lock").is_file()
    claimed = run_python(scripts["claim"], str(folder), cwd=ROOT, env=None)
    assert claimed.returncode == 0, claimed.stderr[-2000:]
    assert "claimed" in claimed.stdout
