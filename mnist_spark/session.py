"""The one place that builds the SparkSession.

Every job and test gets its session from :func:`get_spark`, so they all share
the same behaviour:

* Under ``spark-submit`` it keeps what spark-submit set (master, ``--conf``,
  properties file). Run as plain ``python`` it uses ``local[*]``.
* The executors' Python is the driver's interpreter, unless the user chose one
  (``PYSPARK_PYTHON`` or ``spark.pyspark.python``). Without this a virtualenv
  breaks: workers start the system ``python3`` and fail with
  ``No module named 'pandas'``.
* Arrow and Python worker reuse are on.
* ``conf/spark-defaults.conf`` supplies defaults for every key the user did not
  set, and ``conf/log4j2.properties`` keeps Spark's own logging quiet so a run
  prints our progress lines.
* TensorFlow in an executor uses ``spark.task.cpus`` threads
  (:func:`configure_tensorflow_threads`), so two tasks on two cores do not fight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

#: Settings the project relies on; a user's explicit setting still wins.
REQUIRED_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.python.worker.reuse": "true",
}

#: Environment variables that bound the threads of TensorFlow and its BLAS.
TF_THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")

#: Settings that silence native libraries' start-up notices, applied (driver and executors)
#: only where the user has not set them: TensorFlow's C++ INFO and WARNING lines (CPU
#: features, XLA, ...). TensorFlow 2.21 prints its "oneDNN custom operations are on" notice
#: before it reads any setting; only ``TF_ENABLE_ONEDNN_OPTS=0`` removes it, by turning the
#: oneDNN kernels off, which this project leaves to the user.
QUIET_NATIVE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}

#: Settings the driver's JVM reads when it starts: under spark-submit they come too late from here.
LAUNCH_ONLY_CONF = (
    "spark.driver.memory",
    "spark.driver.extraJavaOptions",
    "spark.driver.extraClassPath",
    "spark.driver.extraLibraryPath",
)


class JavaNotFoundError(RuntimeError):
    """Spark needs a Java runtime and none was found."""


class TensorFlowNotFoundError(RuntimeError):
    """A job needs TensorFlow, and neither ``tensorflow-cpu`` nor ``tensorflow`` is installed."""


def require_tensorflow() -> None:
    """Raise one line naming the extras to install when TensorFlow cannot be imported.

    ``mnist_spark`` requires no TensorFlow build of its own: the ``[cpu]``
    extra brings ``tensorflow-cpu``, ``[gpu]`` brings ``tensorflow``, and
    either one already installed serves.
    """
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise TensorFlowNotFoundError(
            f"this needs TensorFlow, which is not installed for {sys.executable}: "
            "pip install 'mnist_spark[cpu]' (tensorflow-cpu) or 'mnist_spark[gpu]' (tensorflow), "
            "on the driver and on every executor"
        )


def conf_dir() -> Path | None:
    """The folder holding ``spark-defaults.conf`` and ``log4j2.properties``.

    ``$MNIST_SPARK_CONF_DIR`` if set, else the ``conf/`` folder of the source
    checkout. ``None`` when neither exists (an installed wheel without the
    checkout), in which case Spark's own defaults apply.
    """
    env = os.environ.get("MNIST_SPARK_CONF_DIR")
    candidate = Path(env) if env else Path(__file__).resolve().parents[1] / "conf"
    return candidate if (candidate / "spark-defaults.conf").is_file() else None


def read_spark_defaults(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``spark-defaults.conf`` file: ``key value`` lines, ``#`` comments.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "spark-defaults.conf"
    >>> _ = p.write_text("# comment\\nspark.ui.enabled  false\\n")
    >>> read_spark_defaults(p)
    {'spark.ui.enabled': 'false'}
    """
    settings = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{number}: expected 'key value', found {line!r}; "
                "give each setting a value or comment the line out"
            )
        settings[parts[0]] = parts[1].strip()
    return settings


def check_java() -> str:
    """Return the ``java`` executable Spark will use, or raise one clear error.

    Raises
    ------
    JavaNotFoundError
        When neither ``$JAVA_HOME/bin/java`` nor ``java`` on ``PATH`` exists.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file():
            return str(java)
        raise JavaNotFoundError(
            f"JAVA_HOME is {java_home} but {java} does not exist; point JAVA_HOME at a Java 17 installation or unset it"
        )
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "Spark needs Java 17 and `java` is not on PATH; install it "
            "(Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    return java


def quiet_native_logs() -> None:
    """Apply :data:`QUIET_NATIVE_ENV` to this process where unset; call before TensorFlow is imported."""
    for var, value in QUIET_NATIVE_ENV.items():
        os.environ.setdefault(var, value)


def stderr_is_terminal() -> bool:
    """True when stderr is a terminal (a person watching), False for a file or a pipe (a scheduler)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


#: ``--remote`` of the job command line parsed last (None: not given).
_requested_remote: str | None = None


def request_remote(url: str | None) -> None:
    """Record the ``--remote`` of a parsed job command line (None when it was not given)."""
    global _requested_remote
    _requested_remote = url


def remote_url() -> str | None:
    """The Spark Connect address to use: ``--remote``, else ``$SPARK_REMOTE``; None for classic Spark."""
    return _requested_remote or os.environ.get("SPARK_REMOTE") or None


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDDs, no broadcasts)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def under_spark_submit() -> bool:
    """True when this Python process was started by ``spark-submit``."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(
    app_name: str = "mnist_spark",
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    remote: str | None = None,
):
    """Build (or return the running) SparkSession, configured for this project.

    A Spark Connect session when ``remote`` (``--remote``), ``$SPARK_REMOTE``
    or ``spark.api.mode=connect`` (given to spark-submit, in a properties
    file or ``spark-defaults.conf``, in ``conf`` or ``$SPARK_API_MODE``) says
    so. ``sc://host:port`` connects to a Connect server, and needs neither
    Java nor Spark's settings here (the server has them). ``local[N]``, or
    ``spark.api.mode=connect`` with any master, starts a Connect server in
    this process (:func:`_serve_connect`) with this project's settings, as a
    classic session would get them.

    Parameters
    ----------
    app_name : str
        Name shown in the Spark UI.
    master : str, optional
        Master URL. Default: what ``spark-submit`` set, else ``local[*]``.
    conf : mapping, optional
        Settings that override both ``conf/spark-defaults.conf`` and
        :data:`REQUIRED_CONF` (but not what spark-submit was told).
    remote : str, optional
        A Spark Connect address (``sc://host:port``, or ``local[N]``);
        default :func:`remote_url`.

    Returns
    -------
    pyspark.sql.SparkSession

    Raises
    ------
    JavaNotFoundError
        When Java is missing: one line with the fix instead of a py4j traceback.
    ValueError
        For a ``remote`` that is neither ``sc://...`` nor ``local...``, or a
        Connect session without Spark Connect's client libraries.

    Examples
    --------
    >>> spark = get_spark("example", master="local[2]")  # doctest: +SKIP
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if SparkContext._active_spark_context is None:
        # pyspark's switches for a Connect server in this process, inherited from a parent that had one.
        for var in ("SPARK_LOCAL_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
            os.environ.pop(var, None)
    remote = remote or remote_url()
    if remote and remote.startswith("sc://"):
        return _connect_session(app_name, remote, conf)
    if remote and not remote.startswith("local"):
        raise ValueError(
            f"--remote {remote} is not a Spark Connect address; give sc://host:port for a Connect server, "
            "or local[N] to start one in this process"
        )
    submitted = under_spark_submit()
    if not submitted:
        check_java()
    folder = conf_dir()
    # spark-submit always exports SPARK_CONF_DIR ($SPARK_HOME/conf by default);
    # without a log4j2.properties there, Spark logs at INFO.
    submit_conf = os.environ.get("SPARK_CONF_DIR")
    quiet_by_conf = not submitted or bool(submit_conf and (Path(submit_conf) / "log4j2.properties").is_file())
    if folder is not None:
        # Read by the JVM that pyspark launches: quiet log4j2 and the defaults.
        os.environ.setdefault("SPARK_CONF_DIR", str(folder))

    # Start (or attach to spark-submit's) JVM first, so SparkConf sees what
    # spark-submit set and our defaults only fill the gaps.
    SparkContext._ensure_initialized()
    existing = SparkConf()
    defaults_file = folder / "spark-defaults.conf" if folder else None
    from_conf_dir = read_spark_defaults(defaults_file) if defaults_file else {}
    connect = bool(remote) or api_mode(conf, existing.get, from_conf_dir) == "connect"
    if connect:
        _require_connect_client("--remote " + remote if remote else "spark.api.mode=connect")
        if not _jvm_serves_connect():
            # The launcher gave a JVM asked for spark.api.mode=connect the classpath of a JVM
            # Connect client (no Spark SQL, no Connect server): start one that can serve.
            _relaunch_jvm(existing)
            existing = SparkConf()
    settings = {key: value for key, value in from_conf_dir.items() if key not in _MODE_KEYS}
    settings.update(REQUIRED_CONF)
    settings.update({key: value for key, value in (conf or {}).items() if key not in _MODE_KEYS})
    if master:
        settings["spark.master"] = master
    elif not existing.contains("spark.master"):
        settings["spark.master"] = "local[*]"
    if remote:
        settings["spark.master"] = remote  # --remote local[N]: the master of the server in this process
    user_python = os.environ.get("PYSPARK_PYTHON") or existing.get("spark.pyspark.python", None)
    if not user_python:
        os.environ["PYSPARK_PYTHON"] = sys.executable
        settings["spark.pyspark.python"] = sys.executable
    if not quiet_by_conf:
        # spark-submit started the JVM with Spark's INFO-level defaults; the
        # context applies spark.log.level as it starts.
        settings.setdefault("spark.log.level", "WARN")
    task_cpus = existing.get("spark.task.cpus", settings.get("spark.task.cpus", "1"))
    for var in TF_THREAD_VARS:
        settings.setdefault(f"spark.executorEnv.{var}", task_cpus)
    # TensorFlow's C++ start-up notices (CPU features) are not progress.
    quiet_native_logs()
    for var in QUIET_NATIVE_ENV:
        settings.setdefault(f"spark.executorEnv.{var}", os.environ[var])
    server = _connect_server_conf(existing.get, conf or {}) if connect else {}
    for key, value in server.items():
        if key == "spark.plugins" or not (existing.contains(key) or key in (conf or {})):
            settings[key] = value

    # Spark's console progress bar redraws one line with \r: it is for a person at a terminal.
    # spark-submit turns it on for every Python application, so it is set here, not defaulted.
    forced = {} if stderr_is_terminal() else {"spark.ui.showConsoleProgress": "false"}

    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        if key in (conf or {}) or key in ("spark.master", "spark.plugins") or not existing.contains(key):
            builder = builder.config(key, value)
    for key, value in forced.items():
        if key not in (conf or {}):
            builder = builder.config(key, value)
    spark = _classic_session(builder)
    started = SparkContext._active_spark_context.getConf()
    _log_conf_dir_settings(
        defaults_file,
        {
            key: value
            for key, value in from_conf_dir.items()
            if key not in (conf or {}) and started.get(key, None) == value
        },
        late=[key for key in LAUNCH_ONLY_CONF if key in from_conf_dir and not existing.contains(key)],
    )
    where = ""
    if connect:
        spark, port = _serve_connect(spark, started.get("spark.connect.authenticate.token"))
        where = f" (Spark Connect server in this process at localhost:{port})"
    logger.info(
        "Spark %s %ssession on %s%s (%d task slots, python %s)",
        spark.version,
        "Connect " if is_connect(spark) else "",
        started.get("spark.master"),
        where,
        task_slots(spark),
        os.environ.get("PYSPARK_PYTHON", user_python),
    )
    return spark


#: Settings that choose between classic Spark and Spark Connect: get_spark decides, not the builder.
_MODE_KEYS = ("spark.api.mode", "spark.remote")
#: The plugin that makes a classic SparkContext serve Spark Connect; on the classpath of Spark's
#: ``spark-connect`` jar.
CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"


def api_mode(conf: Mapping[str, str] | None, get, defaults: Mapping[str, str]) -> str:
    """``classic`` or ``connect``: what ``spark.api.mode`` says, from the first source that sets it.

    ``conf`` (:func:`get_spark`'s), then ``get(key)`` (the JVM's settings:
    spark-submit's ``--conf`` and properties file, ``spark-defaults.conf`` of
    ``$SPARK_CONF_DIR``), then ``$SPARK_API_MODE``, then ``defaults`` (the
    project's ``spark-defaults.conf``); ``classic`` when none does.

    Raises
    ------
    ValueError
        For a value other than ``classic`` and ``connect``.

    Examples
    --------
    >>> api_mode(None, {"spark.api.mode": "Connect"}.get, {})
    'connect'
    >>> api_mode({"spark.api.mode": "classic"}, {"spark.api.mode": "connect"}.get, {})
    'classic'
    """
    for value in (
        (conf or {}).get("spark.api.mode"),
        get("spark.api.mode"),
        os.environ.get("SPARK_API_MODE"),
        defaults.get("spark.api.mode"),
    ):
        if value:
            mode = value.strip().lower()
            if mode not in ("classic", "connect"):
                raise ValueError(f"spark.api.mode is {value!r}; choose one of: classic, connect")
            return mode
    return "classic"


def _require_connect_client(what: str) -> None:
    """Raise one line naming the extra to install when Spark Connect's client libraries are missing."""
    try:
        import pyspark.sql.connect.session  # noqa: F401  (grpc and the other client libraries)
    except ImportError as error:
        raise ValueError(
            f"{what} needs Spark Connect's client libraries ({error}); "
            "pip install 'mnist_spark[connect]' (pyspark[connect])"
        ) from None


def _jvm_serves_connect() -> bool:
    """True when the JVM this process uses has Spark SQL and Spark Connect's server on its classpath."""
    from pyspark import SparkContext

    jvm = SparkContext._jvm
    assert jvm is not None, "get_spark starts the JVM first"
    utils = jvm.org.apache.spark.util.Utils
    return bool(utils.classIsLoadable(CONNECT_PLUGIN)) and bool(
        utils.classIsLoadable("org.apache.spark.sql.classic.SparkSession")
    )


def _relaunch_jvm(existing) -> None:
    """Replace this process's JVM by one pyspark launches with the same settings and ``spark.api.mode=classic``.

    Spark 4's launcher builds the classpath of a JVM started with
    ``spark.api.mode=connect`` (``spark-submit --conf``, a properties file,
    ``spark-defaults.conf``) for a JVM Spark Connect client: without Spark
    SQL and without the Connect server, which a Python application needs to
    serve itself. The new JVM gets every setting of the old one through a
    properties file (readable only by this user; secrets stay off the
    command line). Under spark-submit the old JVM waits for this process
    to end, as before; a JVM pyspark launched for this process is stopped.
    """
    import shlex
    import tempfile

    from pyspark import SparkContext

    settings = {key: value for key, value in existing.getAll() if key not in _MODE_KEYS}
    settings["spark.api.mode"] = "classic"
    old = SparkContext._gateway
    assert old is not None, "get_spark starts the JVM first"
    process = getattr(old, "proc", None)
    with contextlib.suppress(Exception):  # a gateway already closed
        old.close()
    if process is not None:  # pyspark's JVM for this process: it exits when its stdin closes
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=60)
        except Exception:
            process.kill()
    SparkContext._gateway = None
    SparkContext._jvm = None
    for var in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        os.environ.pop(var, None)
    args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell"))
    if args and args[-1] == "pyspark-shell":
        args = args[:-1]
    before = os.environ.get("PYSPARK_SUBMIT_ARGS")
    with tempfile.TemporaryDirectory(prefix="mnist_spark-") as folder:
        properties = Path(folder) / "spark.properties"
        with open(os.open(properties, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as sink:
            for key, value in sorted(settings.items()):
                sink.write(f"{_escape_property(key, key=True)}={_escape_property(value)}\n")
        os.environ["PYSPARK_SUBMIT_ARGS"] = shlex.join(["--properties-file", str(properties), *args, "pyspark-shell"])
        try:
            SparkContext._ensure_initialized()  # returns once the JVM has read its settings
        finally:
            if before is None:
                os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
            else:
                os.environ["PYSPARK_SUBMIT_ARGS"] = before
    logger.info(
        "started a JVM that serves Spark Connect, with the %d settings of the one spark.api.mode=connect "
        "started as a JVM Spark Connect client",
        len(settings),
    )


def _escape_property(text: str, key: bool = False) -> str:
    r"""``text`` as a key or value of a Java properties file.

    Examples
    --------
    >>> print(_escape_property("C:\\tmp"), _escape_property("a=b", key=True))
    C:\\tmp a\=b
    """
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if key:
        for char in "=: #!":
            out = out.replace(char, "\\" + char)
    elif out.startswith(" "):
        out = "\\" + out
    return out


def _connect_server_conf(get, conf: Mapping[str, str]) -> dict:
    """Settings that make the classic session serve Spark Connect, on this machine only.

    ``get(key)`` reads the settings already made (spark-submit's) and
    ``conf`` is get_spark's: the Connect plugin joins their
    ``spark.plugins``, and a binding address, port or token they set wins
    over these. The server listens on 127.0.0.1, on a free port (two jobs on
    one machine never meet), and takes only clients that send its token.
    """
    plugins = [name.strip() for name in (conf.get("spark.plugins") or get("spark.plugins") or "").split(",")]
    plugins = [name for name in plugins if name]
    if CONNECT_PLUGIN not in plugins:
        plugins.append(CONNECT_PLUGIN)
    return {
        "spark.plugins": ",".join(plugins),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": "0",
        "spark.connect.authenticate.token": uuid.uuid4().hex,
        # As pyspark's own local Connect server: each session's artifacts (Python files, jars) apart.
        "spark.sql.artifact.isolation.enabled": "true",
        "spark.sql.artifact.isolation.alwaysApplyClassloader": "true",
    }


def _classic_session(builder):
    """``builder.getOrCreate()`` as a classic session, whatever ``$SPARK_REMOTE``/``$SPARK_API_MODE`` say.

    get_spark has already decided between classic Spark and Spark Connect;
    pyspark's builder would otherwise decide again from the environment.
    """
    hidden = {var: os.environ.pop(var) for var in ("SPARK_REMOTE", "SPARK_API_MODE") if var in os.environ}
    try:
        return builder.getOrCreate()
    finally:
        os.environ.update(hidden)


def _serve_connect(classic, token: str | None):
    """A Spark Connect session served by ``classic``'s SparkContext; returns it and the server's port.

    As pyspark's ``SparkSession.builder.remote("local[N]")``: the classic
    session's context runs the Connect server (:data:`CONNECT_PLUGIN`) and
    this process becomes its client; stopping the Connect session stops the
    context (pyspark's ``SPARK_LOCAL_REMOTE``). Unlike it, the server is on a
    free port rather than 15002 and always asks for a token.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    service = getattr(classic._jvm, "org.apache.spark.sql.connect.service.SparkConnectService$")
    port = int(getattr(service, "MODULE$").localPort())
    # pyspark's own switches for a Connect client beside its local server: pyspark.sql.functions
    # and friends build Connect plans, and stop() stops the server's context.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    os.environ["SPARK_LOCAL_REMOTE"] = "1"
    url = f"sc://localhost:{port}/;token={token}" if token else f"sc://localhost:{port}"
    return ConnectSession.builder.remote(url).getOrCreate(), port


def _connect_session(app_name: str, url: str, conf: Mapping[str, str] | None):
    """A Spark Connect session at ``url``: the server owns Spark's settings; ``conf`` sets SQL ones."""
    from pyspark.sql import SparkSession

    _require_connect_client(f"--remote {url}")
    # pyspark's own builder also switches pyspark.sql.functions to Spark Connect.
    builder = SparkSession.builder.remote(url).appName(app_name)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    logger.info("Spark Connect session at %s (server Spark %s, %d task slots)", url, spark.version, task_slots(spark))
    return spark


def _log_conf_dir_settings(defaults_file, filled: dict, late=()) -> None:
    """One line naming the settings of the session that the project's ``spark-defaults.conf`` gave.

    ``late`` are its settings that only the launch of the driver's JVM reads, and
    that the JVM did not get: they are logged as a warning with the fix.
    """
    if filled:
        logger.info(
            "settings from %s: %s", defaults_file, ", ".join(f"{key}={value}" for key, value in sorted(filled.items()))
        )
    if late:
        logger.warning(
            "%s from %s cannot take effect: the driver's JVM started without it; give it to "
            "spark-submit (--driver-memory, --conf, or SPARK_CONF_DIR=%s, with "
            "--load-spark-defaults when --properties-file is given)",
            ", ".join(late),
            defaults_file,
            defaults_file.parent,
        )


def task_slots(spark) -> int:
    """How many tasks the cluster runs at once: cores divided by ``spark.task.cpus``.

    On Spark Connect, which has no SparkContext to ask, the cores come from
    the server's settings (:func:`cores_from_conf`).
    """
    cpus = int(spark.conf.get("spark.task.cpus", "1"))
    if is_connect(spark):
        cores = cores_from_conf(lambda key: spark.conf.get(key, None))
        if cores is None:
            logger.warning(
                "the Spark Connect server's settings do not say how many cores it has; "
                "assuming %d task slots (set spark.default.parallelism on the server, or "
                "give --partitions)",
                DEFAULT_CONNECT_SLOTS * cpus,
            )
            cores = DEFAULT_CONNECT_SLOTS * cpus
        return max(1, cores // cpus)
    return max(1, spark.sparkContext.defaultParallelism // cpus)


#: Task slots assumed on a Spark Connect server whose settings name no cores.
DEFAULT_CONNECT_SLOTS = 2


def cores_from_conf(get) -> int | None:
    """A cluster's cores from its settings (``get(key)`` is None when unset); None when they do not say.

    ``spark.default.parallelism``, else the master (``local[N]``, ``local[*]``:
    this machine's cores), else ``spark.cores.max``, else
    ``spark.executor.instances`` x ``spark.executor.cores``.

    Examples
    --------
    >>> cores_from_conf({"spark.master": "local[3]"}.get)
    3
    >>> cores_from_conf({"spark.master": "yarn", "spark.executor.instances": "4",
    ...                  "spark.executor.cores": "8"}.get)
    32
    """
    import re

    if get("spark.default.parallelism"):
        return int(get("spark.default.parallelism"))
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", (get("spark.master") or "").strip())
    if local:
        return (os.cpu_count() or 1) if local.group(1) == "*" else int(local.group(1) or 1)
    if get("spark.cores.max"):
        return int(get("spark.cores.max"))
    if get("spark.executor.instances") and get("spark.executor.cores"):
        return int(get("spark.executor.instances")) * int(get("spark.executor.cores"))
    return None


#: The job whose Spark jobs are being named (:func:`job_phases`); a phase's jobs read ``"<job>: <phase>"``.
_job: str | None = None
#: The operation tag this thread's Spark Connect phase set, per thread as Connect's tags are.
_connect_tag = threading.local()
#: The local property behind ``SparkContext.setJobDescription``: the description of a job in the UI.
DESCRIPTION_PROPERTY = "spark.job.description"


@contextlib.contextmanager
def job_phases(spark, job: str):
    """Name the Spark jobs of a run of ``job``: ``job`` itself, and ``"<job>: <phase>"`` in a :func:`phase`.

    ``cli.run_job`` runs every job in this block, so the Spark UI (and an
    event log, or the History Server) shows which job each Spark job belongs
    to. On leaving, the names are those from before.
    """
    global _job
    previous, _job = _job, job
    try:
        with _named(spark, job):
            yield
    finally:
        _job = previous


@contextlib.contextmanager
def phase(spark, name: str):
    """Name the Spark jobs that this thread starts in the block: ``"<job>: <name>"`` inside :func:`job_phases`.

    On classic Spark this is the jobs' description (``setJobDescription``),
    shown beside each job's number in the UI's job and stage lists; on
    leaving, the description from before is back, so nesting works and no
    later job carries the phase's name. A Spark Connect session has no
    SparkContext: there the name is an operation tag (``SparkSession.addTag``)
    of the block's queries, which the server adds to its jobs' tags and which
    ``SparkSession.interruptTag`` can cancel.

    The description is a property of the thread (of its JVM thread, in
    PySpark's pinned-thread mode): Spark jobs run from threads that the
    block starts carry the name only when started with
    ``pyspark.inheritable_thread_target`` (as Spark ML's ``CrossValidator``
    does), which copies the properties of the thread that wraps them.

    Examples
    --------
    >>> with phase(spark, "evaluation"):
    ...     spark.range(3).count()
    3
    """
    with _named(spark, f"{_job}: {name}" if _job else name):
        yield


@contextlib.contextmanager
def _named(spark, text: str):
    """Name this thread's Spark jobs ``text`` in the block: their description, or on Connect an operation tag."""
    if is_connect(spark):
        with _tagged(spark, text.replace(",", ";")):  # Spark's job tags are comma-separated
            yield
        return
    context = getattr(spark, "sparkContext", None)
    if context is None:  # not a SparkSession (a stand-in): nothing to name
        yield
        return
    previous = context.getLocalProperty(DESCRIPTION_PROPERTY)
    context.setJobDescription(text)
    try:
        yield
    finally:
        context.setLocalProperty(DESCRIPTION_PROPERTY, previous)  # None removes it


@contextlib.contextmanager
def cancellable(spark, tag: str):
    """Tag the Spark jobs that this thread starts in the block, so that :func:`cancel_jobs` stops them.

    A job tag on classic Spark (``SparkContext.addJobTag``), an operation tag
    on Spark Connect (``SparkSession.addTag``); either belongs to the thread.
    """
    if is_connect(spark):
        spark.addTag(tag)
        remove = spark.removeTag
    else:
        spark.sparkContext.addJobTag(tag)
        remove = spark.sparkContext.removeJobTag
    try:
        yield
    finally:
        remove(tag)


def cancel_jobs(spark, tag: str) -> None:
    """Cancel the running Spark jobs tagged ``tag`` by :func:`cancellable`, from any thread."""
    if is_connect(spark):
        spark.interruptTag(tag)
    else:
        spark.sparkContext.cancelJobsWithTag(tag)


@contextlib.contextmanager
def _tagged(spark, tag: str):
    """Tag this thread's Spark Connect queries ``tag`` instead of the enclosing phase's tag, in the block."""
    previous = getattr(_connect_tag, "value", None)
    if previous:
        spark.removeTag(previous)
    spark.addTag(tag)
    _connect_tag.value = tag
    try:
        yield
    finally:
        spark.removeTag(tag)
        _connect_tag.value = previous
        if previous:
            spark.addTag(previous)


#: The thread count this process's TensorFlow pools were given (:func:`configure_tensorflow_threads`), once set.
_TENSORFLOW_THREADS: list[int] = []


def task_cpus() -> int | None:
    """The running Spark task's ``spark.task.cpus``; None outside a task.

    A Python worker clears its task context when the task ends: a thread the
    task started, still running after it, has none.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.cpus() if context is not None else None


def configure_tensorflow_threads(threads: int | None = None) -> int:
    """Bound TensorFlow's thread pools in this process; call before building a model.

    In a Spark task the default is the task's ``spark.task.cpus``; elsewhere
    the count the pools were given before in this process, else the
    ``TF_NUM_INTRAOP_THREADS`` variable, else every core. Returns the number
    used. Safe to call more than once in a reused Python worker.

    The pools' size changes the order in which some kernels add up their
    parts, so a replica's bits depend on it: a worker's warm-up, which runs
    in a thread after its task has ended, passes the task's count
    (:func:`mnist_spark.training.warm_in_background`).
    """
    if threads is None:
        threads = (
            task_cpus()
            or (_TENSORFLOW_THREADS[0] if _TENSORFLOW_THREADS else None)
            or int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0"))
            or os.cpu_count()
            or 1
        )
    for var in TF_THREAD_VARS:
        os.environ[var] = str(threads)
    import_keras()
    import tensorflow as tf

    quiet_keras()

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        _TENSORFLOW_THREADS[:] = [threads]
    except RuntimeError:
        # TensorFlow was initialised earlier in this worker; its pools are fixed.
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        # Several Python workers share an executor's GPUs: each takes memory as it needs it.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return threads


#: Whether :func:`import_keras` imported Keras in this process (and froze its objects).
_KERAS_FROZEN: list = []


def import_keras() -> None:
    """Import TensorFlow and Keras into this process, and exclude what they made from garbage collection.

    The import makes some 350,000 objects that live as long as the process,
    and a full collection walks every tracked object: 0.16 to 0.4 s once
    TensorFlow is loaded. A reused Spark Python worker runs one after every
    task (``gc.collect()`` in ``pyspark.daemon``), and the import alone set
    off a dozen. So the import runs with automatic collection paused, and
    its objects are then frozen (``gc.freeze``): later collections skip
    them, and take milliseconds. When other code imported Keras first,
    nothing is frozen: the process may by then hold that code's objects (a
    model, say), and frozen cycles are never freed. A call while another
    thread imports waits for that import (Python's import lock). A failed
    import raises as a plain ``import keras`` would.
    """
    quiet_native_logs()
    require_tensorflow()
    if _KERAS_FROZEN or "keras" in sys.modules:
        import keras  # noqa: F401  (waits for an import under way in another thread)

        return
    _KERAS_FROZEN.append(True)
    enabled = gc.isenabled()
    gc.disable()
    try:
        import keras  # noqa: F401,F811  (TensorFlow with it)
    finally:
        gc.freeze()  # what the import made: automatic collection was paused
        if enabled:
            gc.enable()


def quiet_keras() -> None:
    """Keras' progress bars off when stderr is not a terminal (a log file has no use for \\r)."""
    if not stderr_is_terminal():
        import keras

        keras.utils.disable_interactive_logging()


def task_gpus() -> tuple:
    """GPU addresses Spark assigned to the running task (``spark.task.resource.gpu.amount``).

    Empty outside a task, and in a task without GPUs.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return ()
    info = context.resources().get("gpu")
    return tuple(info.addresses) if info is not None else ()


def task_device() -> str | None:
    """The Keras device of the running task: ``gpu:<address>`` of its first GPU, else None.

    Spark's addresses are the GPU indices its discovery script reports, which
    are TensorFlow's indices of the GPUs the executor sees. A task uses one
    GPU; give each task one (``spark.task.resource.gpu.amount=1``).

    Raises
    ------
    ValueError
        When the address is not a GPU index.
    """
    gpus = task_gpus()
    if not gpus:
        return None
    if not gpus[0].isdigit():
        raise ValueError(
            f"Spark assigned this task GPU address {gpus[0]!r}, expected a GPU index such as '0'; "
            "make the GPU discovery script report indices"
        )
    return f"gpu:{int(gpus[0])}"


def device_scope():
    """A context manager placing Keras and TensorFlow work on the task's GPU; a no-op without one.

    Used wherever a task builds or runs a network (training replicas, the
    featurizer, scoring), so each task computes on the GPU Spark gave it and
    no other.
    """
    import contextlib

    device = task_device()
    if device is None:
        return contextlib.nullcontext()
    import keras

    return keras.device(device)
