"""A throw-away certificate authority and broker certificate for the local broker's TLS listener.

Written once into .state/kafka/tls/: ``ca.pem`` (what clients trust: KAFKA_SSL_CA_LOCATION) and
``broker.pem`` (the broker's unencrypted PKCS#8 key and certificate, Kafka's PEM keystore), valid
for 127.0.0.1 and localhost. Local use only; a real cluster's certificates come from its operator.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Entrain local"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ensure_certificates(folder: Path, days: int = 3650) -> tuple[Path, Path]:
    """(ca.pem, broker.pem), created on first use."""
    ca_path, broker_path = folder / "ca.pem", folder / "broker.pem"
    if ca_path.exists() and broker_path.exists():
        return ca_path, broker_path
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Entrain local CA")).issuer_name(_name("Entrain local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    broker_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem) + ca.public_bytes(pem))
    broker_path.chmod(0o600)
    ca_path.write_bytes(ca.public_bytes(pem))
    return ca_path, broker_path
