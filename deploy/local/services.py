"""Start and stop Entrain's services as local background processes.

Usage: python deploy/local/services.py up|down|status [SERVICE ...]

Each service runs as ``python -m <service>`` with its pid and log in
.state/<service>/; ``up`` waits until its /readyz answers 200 and is a no-op for
a service that is already running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

from processes import running_pid, stop, wait_until_ready

from kit.settings import REPO_ROOT, STATE_DIR

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    env: dict[str, str]
    module: str = ""  # python -m <module>; default: the name

    @property
    def folder(self):  # type: ignore[no-untyped-def]
        return STATE_DIR / self.name

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"


def services() -> dict[str, Service]:
    ingest_state = STATE_DIR / "ingest"
    def secret(name: str, file: str) -> dict[str, str]:
        return {name: os.environ.get(name, str(ingest_state / file))}

    api_keys = secret("ENTRAIN_API_KEYS_FILE", "api-keys.json")
    pseudonyms = secret("ENTRAIN_PSEUDONYM_SECRET_FILE", "pseudonym.secret")
    token_public = secret("ENTRAIN_TOKEN_PUBLIC_KEYS_FILE", "token-public.jwks")
    return {
        "ingest": Service("ingest", int(os.environ.get("ENTRAIN_INGEST_PORT", "8080")), {
            **api_keys, **pseudonyms, **secret("ENTRAIN_TOKEN_SIGNING_KEYS_FILE", "token-signing.jwks")}),
        "soundtrack": Service("soundtrack", int(os.environ.get("ENTRAIN_SOUNDTRACK_METRICS_PORT", "9102")), {}),
        "inference": Service("inference", int(os.environ.get("ENTRAIN_INFERENCE_METRICS_PORT", "9103")), {}),
        "retrainer": Service("retrainer", int(os.environ.get("ENTRAIN_RETRAINER_METRICS_PORT", "9106")), {},
                             module="inference.retrainer"),
        "watermark": Service("watermark", int(os.environ.get("ENTRAIN_WATERMARK_METRICS_PORT", "9104")),
                             api_keys),  # the detection API
        "delivery": Service("delivery", int(os.environ.get("ENTRAIN_DELIVERY_PORT", "8085")),
                            {**pseudonyms, **token_public}, module="delivery"),
        "royalty": Service("royalty", int(os.environ.get("ENTRAIN_ROYALTY_METRICS_PORT", "9105")), {
            "ENTRAIN_ROYALTY_INSTANCE": os.environ.get("ENTRAIN_ROYALTY_INSTANCE", "local-0"),
        }),
    }


def pid_of(service: Service) -> int | None:
    return running_pid(service.folder / "pid")


def ready(service: Service) -> bool:
    try:
        with urllib.request.urlopen(service.ready_url, timeout=3) as response:  # noqa: S310 (loopback only)
            return bool(response.status == 200)
    except OSError:
        return False


def up(service: Service) -> None:
    if pid_of(service) is not None and ready(service):
        print(f"[{service.name}] already running")
        return
    service.folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **service.env, "PYTHONPATH": str(REPO_ROOT / "services")}
    with open(service.folder / "service.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", service.module or service.name], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT)
    (service.folder / "pid").write_text(str(proc.pid))
    wait_until_ready(proc, lambda: ready(service), START_TIMEOUT_S, service.name, service.folder / "service.log", 0.3)
    print(f"[{service.name}] ready on {service.ready_url.removesuffix('/readyz')} (pid {proc.pid})")


def down(service: Service) -> None:
    if stop(service.folder / "pid", grace_s=10, group=True):
        print(f"[{service.name}] stopped")


def status(service: Service) -> None:
    print(f"[{service.name}] pid {pid_of(service)}, {'ready' if ready(service) else 'not ready'}")


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)} [SERVICE ...]")
    known = services()
    names = sys.argv[2:] or list(known)
    for name in names if sys.argv[1] != "down" else reversed(names):
        commands[sys.argv[1]](known[name])
