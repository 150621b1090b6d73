"""Create local development secrets for ingest, once, under .state/ingest/ (git-ignored).

  api-keys.json      the key store ingest loads (hashes only)
  pseudonym.secret   the HMAC key that turns app user ids into listener ids
  token-signing.jwks the Ed25519 private key ingest signs listener tokens with
  token-public.jwks  its public half, for every service that verifies listener tokens
  dev-keys.env       the plaintext dev keys, for curl and the demo:
                       ENTRAIN_DEV_APP_KEY          listener-app scope
                       ENTRAIN_DEV_RIGHTS_HOLDER_KEY rights-holder scope for rh-demo-0007
                       ENTRAIN_DEV_ADMIN_KEY        admin scope
and under .state/watermark/:
  keys.json          the watermark key ring ({"active": id, "keys": {id: hexsecret}})
Never use these outside a developer machine.
"""

from __future__ import annotations

import json
import secrets

from kit.auth import hash_key, new_key
from kit.settings import STATE_DIR
from kit.tokens import generate_key_set

FOLDER = STATE_DIR / "ingest"
KEYS = [
    ("ENTRAIN_DEV_APP_KEY", "dev-app", ["listener-app"], None),
    ("ENTRAIN_DEV_RIGHTS_HOLDER_KEY", "dev-rights-holder", ["rights-holder"], "rh-demo-0007"),
    ("ENTRAIN_DEV_ADMIN_KEY", "dev-admin", ["admin"], None),
]


def watermark_keys() -> None:
    path = STATE_DIR / "watermark" / "keys.json"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key_id = "wk-dev-1"
    path.write_text(json.dumps({"active": key_id, "keys": {key_id: secrets.token_hex(32)}}, indent=2) + "\n")
    path.chmod(0o600)
    print(f"watermark key ring written to {path}")


def token_keys() -> None:
    private, public = FOLDER / "token-signing.jwks", FOLDER / "token-public.jwks"
    if private.exists() and public.exists():
        return
    signing, verifying = generate_key_set()
    private.write_text(json.dumps(signing, indent=2) + "\n")
    private.chmod(0o600)
    public.write_text(json.dumps(verifying, indent=2) + "\n")
    print(f"listener-token keys written to {FOLDER}")


def main() -> None:
    watermark_keys()
    FOLDER.mkdir(parents=True, exist_ok=True)
    token_keys()
    FOLDER.mkdir(parents=True, exist_ok=True)
    env_file, keys_file, secret_file = FOLDER / "dev-keys.env", FOLDER / "api-keys.json", FOLDER / "pseudonym.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32) + "\n")
        secret_file.chmod(0o600)
    if env_file.exists() and keys_file.exists():
        print(f"dev secrets exist in {FOLDER}")
        return
    plain = {var: new_key() for var, *_ in KEYS}
    store = [{"key_id": key_id, "sha256": hash_key(plain[var]), "scopes": scopes, "rights_holder_id": rh}
             for var, key_id, scopes, rh in KEYS]
    keys_file.write_text(json.dumps(store, indent=2) + "\n")
    env_file.write_text("".join(f"{var}={plain[var]}\n" for var in plain))
    env_file.chmod(0o600)
    print(f"dev secrets written to {FOLDER} (keys in {env_file})")


if __name__ == "__main__":
    main()
