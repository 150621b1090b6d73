"""Start, stop and check the local S3-compatible server: s3proxy 4.0.0 on a local directory.

Usage: python deploy/local/s3.py up|down|status|env

s3proxy (Apache-2.0, https://github.com/gaul/s3proxy) implements the S3 API, including SigV4,
presigned URLs and conditional writes (If-None-Match), over Apache jclouds' filesystem backend.
Maven Central serves it as one jar (``org.gaul:s3proxy:4.0.0:jar:jar-with-dependencies``, ~50 MB),
downloaded once into the Maven cache; it runs on the machine's Java 17 and answers in 2-8 s.
4.0.0, not 3.x: 3.0.0 checks If-None-Match with a HEAD before an unconditional write, so of 8
concurrent first writes of one name several "won" (tests/integration/test_s3_store.py caught it);
4.0.0's filesystem backend evaluates the condition as it writes, as S3 does.
Objects live in .state/s3/data/<bucket>/ (a bucket is a directory there). SeaweedFS (also
Apache-2.0) works too but takes 7.5 minutes to build here; MinIO's server is AGPL.

It listens on 127.0.0.1:ENTRAIN_S3_PORT (default 8333) and accepts one identity, generated once
into .state/s3/credentials.env. ``env`` prints the environment a service needs to use it
(ENTRAIN_SEGMENT_STORE=s3://entrain-segments/segments, AWS_ENDPOINT_URL, AWS_REGION and the
key pair). If AWS_ENDPOINT_URL is already set, nothing is started: that server is used.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from processes import resident_mb, running_pid, stop, wait_until_ready

from kit.settings import REPO_ROOT, STATE_DIR

VERSION = "4.0.0"
ARTIFACT = f"org.gaul:s3proxy:{VERSION}:jar:jar-with-dependencies"
JAR = (Path.home() / ".m2" / "repository" / "org" / "gaul" / "s3proxy" / VERSION
       / f"s3proxy-{VERSION}-jar-with-dependencies.jar")
STATE = STATE_DIR / "s3"
PID_FILE = STATE / "s3proxy.pid"
CREDENTIALS = STATE / "credentials.env"
PORT = int(os.environ.get("ENTRAIN_S3_PORT", "8333"))
BUCKET = "entrain-segments"
START_TIMEOUT_S = 60


def log(msg: str) -> None:
    print(f"[s3] {msg}", flush=True)


def credentials() -> dict[str, str]:
    """The local server's one identity, created on first use."""
    if not CREDENTIALS.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        CREDENTIALS.write_text(f"AWS_ACCESS_KEY_ID=entrain-local-{secrets.token_hex(4)}\n"
                               f"AWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(30)}\n")
        CREDENTIALS.chmod(0o600)
    return dict(line.split("=", 1) for line in CREDENTIALS.read_text().split())


def local_env(bucket: str = BUCKET, prefix: str = "segments") -> dict[str, str]:
    """What a process needs to use the local server as its segment store."""
    return {"ENTRAIN_SEGMENT_STORE": f"s3://{bucket}/{prefix}", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{PORT}",
            "AWS_REGION": "us-east-1", **credentials()}


def ready(timeout_s: float = 2.0) -> bool:
    """Something speaks S3 on the port (an unsigned request is refused with 403, as S3 does)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=timeout_s)
        return True
    except urllib.error.HTTPError as exc:
        return exc.code == 403
    except OSError:
        return False


def jar() -> Path:
    if not JAR.exists():
        log(f"downloading {ARTIFACT} into the Maven cache (first run only, ~50 MB)...")
        subprocess.run(["mvn", "-q", "-B", "-s", str(REPO_ROOT / "deploy" / "maven-settings.xml"),
                        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:get", f"-Dartifact={ARTIFACT}",
                        "-Dtransitive=false"], check=True)
    return JAR


def up() -> None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        log(f"AWS_ENDPOINT_URL={os.environ['AWS_ENDPOINT_URL']}: using that server, starting nothing")
        return
    (STATE / "data" / BUCKET).mkdir(parents=True, exist_ok=True)  # the bucket
    if ready():
        log(f"already answering on 127.0.0.1:{PORT}")
        return
    creds = credentials()
    config = STATE / "s3proxy.conf"
    config.write_text("\n".join([
        f"s3proxy.endpoint=http://127.0.0.1:{PORT}", "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={creds['AWS_ACCESS_KEY_ID']}", f"s3proxy.credential={creds['AWS_SECRET_ACCESS_KEY']}",
        "jclouds.provider=filesystem", f"jclouds.filesystem.basedir={STATE / 'data'}", ""]))
    config.chmod(0o600)
    command = ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(jar()),
               "--properties", str(config)]
    with open(STATE / "s3proxy.log", "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    PID_FILE.write_text(str(proc.pid))
    started = time.monotonic()
    wait_until_ready(proc, ready, START_TIMEOUT_S, "s3", STATE / "s3proxy.log")
    log(f"s3proxy {VERSION} pid {proc.pid} answering on 127.0.0.1:{PORT} after {time.monotonic() - started:.1f} s "
        f"(bucket {BUCKET}, data in {STATE / 'data'})")


def down() -> None:
    pid = stop(PID_FILE, grace_s=10)
    log(f"stopped s3proxy pid {pid}" if pid else "no local s3proxy running")


def status() -> None:
    pid = running_pid(PID_FILE)
    log(f"127.0.0.1:{PORT}: {'answering' if ready() else 'not answering'}; pid {pid}, {resident_mb(pid)} MB resident")
    sys.exit(0 if ready() else 1)


def env() -> None:
    for name, value in local_env().items():
        print(f"export {name}={value}")


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status, "env": env}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    commands[sys.argv[1]]()
