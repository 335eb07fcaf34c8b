"""A real single-node SLURM on localhost for tests: munged + slurmctld + slurmd, stopped by PID.

Needs Debian's slurm-wlm and munge (installed by .ci/run). Everything the daemons write lives in
a temporary folder; clients find the cluster through SLURM_CONF in the returned environment.

The node declares ``gpus`` GPUs as a generic resource (GresTypes=gpu, a gres.conf whose device File is
/dev/null): a *schedulable token only*. Jobs that ask for ``--gpus=1`` are scheduled and their request is
visible in ``scontrol show job``, but no device exists, so the job's code finds no CUDA and runs on the CPU.
Finished jobs stay in slurmctld for ``MinJobAge`` seconds so tests can read their submitted parameters.
Besides the default partition `debug` the node is in `compute` and `gpu`, the partition names of
profiles/slurm's EDIT lines, so a test can send jobs there as a user's edited profile would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CONF = """\
ClusterName=pipelinetest
SlurmctldHost={host}
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
MinJobAge=3600
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=compute Nodes=ALL MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
"""


def available() -> str | None:
    """None when the SLURM and munge daemons are installed, else what is missing."""
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue") if not shutil.which(b)
               and not Path("/usr/sbin", b).exists()]
    return f"not installed: {', '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _ensure_munged() -> None:
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run([_exe("munged"), "--force"], check=True, capture_output=True)
    for _ in range(50):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not start")


@contextmanager
def local_slurm(root: Path, cpus: int | None = None, mem_mb: int = 8000, gpus: int = 1) -> Iterator[dict[str, str]]:
    """Start a one-node cluster in ``root``; yield the environment for its clients; stop it by PID."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(host=host, root=root, ctl_port=_free_port(), d_port=_free_port(),
                                cpus=cpus or os.cpu_count() or 2, mem_mb=mem_mb, gpus=gpus))
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null Count={gpus}\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # The executor's job step strips SLURM_CONF before its inner `srun`, which then reads the
    # default path: point that at this cluster while it runs (a real node has its own file there).
    default_conf = Path("/etc/slurm/slurm.conf")
    if default_conf.exists() and not (default_conf.is_symlink() and "pipelinetest" in default_conf.read_text()):
        raise RuntimeError(f"{default_conf} belongs to a real cluster; run this test on a machine without one")
    default_conf.parent.mkdir(parents=True, exist_ok=True)
    default_conf.unlink(missing_ok=True)
    default_conf.symlink_to(conf)
    _ensure_munged()
    subprocess.run([_exe("slurmctld"), "-f", str(conf)], check=True, env=env)
    subprocess.run([_exe("slurmd"), "-f", str(conf)], check=True, env=env)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if "idle" in out:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"SLURM node never became idle; see {root}/slurmctld.log and slurmd.log")
        yield env
    finally:
        for pidfile in ("slurmd.pid", "slurmctld.pid"):
            p = root / pidfile
            if p.exists():
                try:
                    os.kill(int(p.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        default_conf.unlink(missing_ok=True)
        time.sleep(1)
