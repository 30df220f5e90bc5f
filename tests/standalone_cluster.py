"""A real Spark standalone cluster on 127.0.0.1: one master, N one-core workers.

Started from the pyspark installation (``spark-class ...deploy.master.Master``
and ``...deploy.worker.Worker``), listening on loopback only, and stopped by
the process ids it started (with their executors and Python workers).

The library reaches executors only as a zip passed with ``--py-files``: they
run :meth:`StandaloneCluster.executor_python`, an interpreter that sees this
environment's dependencies but not the editable install of ``mnist_spark``,
as a worker machine that never saw the checkout would.

Used by ``tests/test_cluster.py``, and runnable::

    .venv/bin/python tests/standalone_cluster.py        # demo: start, run both jobs, stop (make cluster-demo)
    .venv/bin/python tests/standalone_cluster.py up     # spark://127.0.0.1:7077 stays up (make cluster-up)
    .venv/bin/python tests/standalone_cluster.py down   # stop it by its process ids (make cluster-down)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_state(ui_url: str) -> dict | None:
    """The standalone master's state from its web UI (``<ui_url>/json/``), or None while the UI is not ready.

    A starting master may refuse the connection, or answer ``/json/`` with its
    HTML overview page until the JSON handler is attached.
    """
    try:
        with urllib.request.urlopen(f"{ui_url}/json/", timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):  # not listening yet, or not JSON yet
        return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Submission:
    """A job submitted without waiting: its spark-submit process (a process group of its
    own), the log it writes (stdout and stderr), and its driver's web UI port."""

    def __init__(self, process: subprocess.Popen, log: Path, ui_port: int):
        self.process, self.log, self.ui_port = process, log, ui_port

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit status; kills the job and raises ``TimeoutError`` after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"job did not finish in {timeout} s:\n{self.output[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL the driver: spark-submit's JVM and the Python driver, like a lost machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def venv_without_checkout(folder: Path) -> Path:
    """A new venv whose site-packages points at this one's, without its ``.pth`` files; returns its python.

    A ``.pth`` line adds a folder to ``sys.path`` but the ``.pth`` files in
    that folder are not run, so the editable install's import hook is not
    installed: numpy, pyspark and TensorFlow import, ``mnist_spark`` does not.
    """
    import sysconfig

    python = folder / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


class StandaloneCluster:
    """Start with :meth:`start`, submit jobs with :meth:`submit`, stop with :meth:`stop`."""

    def __init__(
        self,
        workers: int = 2,
        folder: str | None = None,
        worker_memory: str = "3g",
        port: int | None = None,
        ui_port: int | None = None,
        java_options: str = "",
    ):
        """``java_options`` go to every JVM of the cluster: master, workers, executors and, through
        ``SPARK_SUBMIT_OPTS``, the drivers :meth:`submit` starts."""
        import pyspark

        self.spark_home = Path(pyspark.__file__).parent
        self.folder = Path(folder or tempfile.mkdtemp(prefix="spark-cluster-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        #: The jobs submitted without waiting, so a failed test can end the ones it left running.
        self.submissions: list[Submission] = []
        self.workers = workers
        self.worker_memory = worker_memory
        self.port, self.ui_port = port or _free_port(), ui_port or _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.java_options = java_options

    def _env(self) -> dict:
        env = dict(
            os.environ,
            SPARK_HOME=str(self.spark_home),
            SPARK_LOG_DIR=str(self.folder),
            SPARK_CONF_DIR=str(PROJECT / "conf"),
            PYSPARK_PYTHON=sys.executable,
            SPARK_LOCAL_IP="127.0.0.1",
        )
        env.pop("PYSPARK_GATEWAY_PORT", None)
        if self.java_options:
            env["SPARK_DAEMON_JAVA_OPTS"] = self.java_options
            env["SPARK_SUBMIT_OPTS"] = self.java_options
        return env

    def _launch(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        # The child keeps its own copy of the log's descriptor.
        with open(self.folder / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                [str(self.spark_home / "bin" / "spark-class"), *args],
                env={**self._env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start(self, timeout: float = 60.0) -> StandaloneCluster:
        self._launch(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        for number in range(self.workers):
            work = self.folder / f"work{number}"
            work.mkdir(parents=True, exist_ok=True)
            self._launch(
                f"worker{number}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                self.worker_memory,
                "--webui-port",
                str(_free_port()),
                "--work-dir",
                str(work),
                self.url,
                env=self._gpu_env(number),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = master_state(f"http://127.0.0.1:{self.ui_port}")
            if state is not None and sum(w["state"] == "ALIVE" for w in state["workers"]) == self.workers:
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"standalone cluster did not start in {timeout} s; see logs in {self.folder}")

    def _gpu_env(self, number: int) -> dict:
        """Worker ``number`` offers one GPU, address ``number``, found by a discovery script.

        The addresses are made up (this machine need not have a GPU): they
        show which GPU Spark gave each task. Applications use them only when
        they ask (``spark.executor.resource.gpu.amount``).
        """
        script = self.folder / f"gpus-worker{number}.sh"
        script.write_text(f'#!/bin/sh\necho \'{{"name": "gpu", "addresses": ["{number}"]}}\'\n')
        script.chmod(0o755)
        return {
            "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount=1 "
            f"-Dspark.worker.resource.gpu.discoveryScript={script}"
        }

    def executor_python(self) -> Path:
        """A venv with this one's dependencies but not the checkout's ``mnist_spark`` (venv_without_checkout)."""
        python = self.folder / "executor-python" / "bin" / "python"
        return python if python.exists() else venv_without_checkout(self.folder / "executor-python")

    def library_zip(self) -> Path:
        """The ``mnist_spark`` package as a zip for ``--py-files``."""
        path = self.folder / "mnist_spark.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for source in (PROJECT / "mnist_spark").rglob("*.py"):
                archive.write(source, source.relative_to(PROJECT))
        return path

    def submit(
        self,
        job: str,
        *args: str,
        env: dict | None = None,
        timeout: float = 600.0,
        wait: bool = True,
        conf: dict | None = None,
    ):
        """``spark-submit --master <cluster> --py-files mnist_spark.zip jobs/<job>.py args``.

        ``conf`` adds Spark settings. With ``wait`` (the default) returns the
        finished ``CompletedProcess``;
        spark-submit merges the Python driver's stderr into its stdout, so
        progress lines and error messages are in ``stdout``. Without ``wait``
        returns a running :class:`Submission`.
        """
        ui_port = _free_port()
        command = [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            self.url,
            "--conf",
            f"spark.ui.port={ui_port}",
            "--conf",
            f"spark.pyspark.driver.python={sys.executable}",
            "--conf",
            f"spark.pyspark.python={self.executor_python()}",
            *([f"--conf=spark.executor.extraJavaOptions={self.java_options}"] if self.java_options else []),
            *[f"--conf={key}={value}" for key, value in (conf or {}).items()],
            "--py-files",
            str(self.library_zip()),
            str(PROJECT / "jobs" / f"{job}.py"),
            *args,
        ]
        full_env = {**self._env(), **(env or {})}
        if wait:
            return subprocess.run(
                command, env=full_env, cwd=self.folder, capture_output=True, text=True, timeout=timeout
            )
        log = self.folder / f"{job}-{ui_port}.log"
        with open(log, "w") as sink:
            process = subprocess.Popen(
                command, env=full_env, cwd=self.folder, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.submissions.append(Submission(process, log, ui_port))
        return self.submissions[-1]

    def kill_submissions(self) -> int:
        """SIGKILL every submitted job still running and wait until the workers run no executor;
        returns how many were running."""
        running = [job for job in self.submissions if job.process.poll() is None]
        for job in running:
            job.kill()
        self.submissions.clear()
        if running:
            self.wait_for_no_executors()
        return len(running)

    def executor_pids(self) -> dict[str, int]:
        """Process ids of the executors the workers launched, by Spark executor id."""
        pids = {}
        for worker in self.processes[1:]:
            for pid in _descendants(worker.pid):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                except OSError:
                    continue
                if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in argv:
                    pids[argv[argv.index("--executor-id") + 1]] = pid
        return pids

    def wait_for_no_executors(self, timeout: float = 60.0) -> None:
        """Wait until the workers run no executor (after an application ended or was killed)."""
        deadline = time.monotonic() + timeout
        while self.executor_pids():
            if time.monotonic() > deadline:
                raise TimeoutError(f"executors still running after {timeout} s: {self.executor_pids()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every process this cluster started, with their children."""
        _terminate([process.pid for process in reversed(self.processes)])
        for process in self.processes:
            process.wait()
        self.processes.clear()


def _terminate(pids: list[int], timeout: float = 20.0) -> None:
    """SIGTERM each process and its descendants; SIGKILL what is left after ``timeout`` s."""
    everything = [p for pid in pids for p in [*_descendants(pid), pid]]
    for pid in everything:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in everything):
        time.sleep(0.2)
    for pid in everything:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


STATE_FILE = "cluster.json"


def _cluster_pids(state: Path) -> list[int]:
    """The recorded process ids that are still this cluster's Spark daemons (not reused ids)."""
    pids = []
    for pid in json.loads(state.read_text())["pids"]:
        try:
            if "org.apache.spark.deploy." in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def up(folder: str, port: int = 7077, ui_port: int = 8080) -> int:
    """Start a two-worker cluster that outlives this process; ``down`` stops it."""
    state = Path(folder) / STATE_FILE
    if state.exists():
        if _cluster_pids(state):
            print(
                f"a cluster started from {folder} is still up ({json.loads(state.read_text())['url']}); "
                f"stop it first: make cluster-down",
                file=sys.stderr,
            )
            return 1
        state.unlink()  # left by a cluster that is gone (a reboot, a kill)
    cluster = StandaloneCluster(folder=folder, port=port, ui_port=ui_port).start()
    state.write_text(
        json.dumps(
            {
                "url": cluster.url,
                "ui": f"http://127.0.0.1:{cluster.ui_port}",
                "pids": [p.pid for p in cluster.processes],
            }
        )
    )
    print(
        f"standalone cluster {cluster.url}: {cluster.workers} one-core workers, web UI "
        f"http://127.0.0.1:{cluster.ui_port}, logs in {cluster.folder}"
    )
    return 0


def down(folder: str) -> int:
    """Stop the cluster ``up`` started from ``folder``, by the process ids it recorded."""
    state = Path(folder) / STATE_FILE
    if not state.exists():
        print(f"no cluster was started from {folder}", file=sys.stderr)
        return 1
    _terminate(_cluster_pids(state))
    state.unlink()
    print("standalone cluster stopped")
    return 0


def demo() -> int:
    """Start a two-worker cluster, run train_cnn and transfer on it, print the results, stop it."""
    cluster = StandaloneCluster().start()
    print(f"standalone cluster at {cluster.url} (logs in {cluster.folder})")
    try:
        for job, args in (
            ("train_cnn", ["--limit", "2000", "--epochs", "2", "--arch", "simple_cnn"]),
            ("transfer", ["--weights", "none", "--image-size", "75", "--train-limit", "200", "--test-limit", "100"]),
        ):
            output = cluster.folder / f"run-{job}"
            result = cluster.submit(job, *args, "--output", str(output))
            if result.returncode != 0:
                print(result.stdout[-3000:], file=sys.stderr)
                return result.returncode
            metrics = json.loads((output / "metrics.json").read_text())
            print(f"{job}: {output} accuracy {metrics.get('test_accuracy', metrics.get('accuracy')):.4f}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="demo",
        choices=["demo", "up", "down"],
        help="demo: start, run both jobs, stop; up / down: a cluster that stays up",
    )
    parser.add_argument("--folder", default="runs/standalone-cluster", help="logs and state (up, down)")
    parser.add_argument("--port", type=int, default=7077, help="master port (up)")
    parser.add_argument("--ui-port", type=int, default=8080, help="master web UI port (up)")
    args = parser.parse_args()
    if args.command == "up":
        sys.exit(up(args.folder, args.port, args.ui_port))
    sys.exit(down(args.folder) if args.command == "down" else demo())
