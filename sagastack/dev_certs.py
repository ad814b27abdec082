"""A development certificate authority and a server certificate it signed, as PEM files,
made with ``cryptography`` — for the embedded Apache Kafka's TLS listener
(``ApacheKafka(sasl_ssl=True)``) and the tests. Never for production: the CA's key lies
next to its certificate.

Files written into ``directory`` (private keys 0600):

    ca.pem          the CA certificate: what clients trust (``KAFKA_SSL_CAFILE``)
    ca-key.pem      the CA's private key (PKCS#8)
    server.pem      the server's private key (PKCS#8, unencrypted) followed by its
                    certificate and the CA's: the chain a Java PEM keystore reads
                    (``ssl.keystore.type=PEM``)

The server certificate names ``localhost`` and ``127.0.0.1`` (subject alternative names),
and any other host names asked for, so a client connecting to one of them with host-name
checking accepts it.

``python -m sagastack.dev_certs DIR --dns kafka --password-file order_svc.password …
--for-containers`` writes the same files for ``compose.secure.yaml`` (the broker's name
there is ``kafka``), and a random SCRAM password in each file named (``--password-file``
again for more). Compose mounts file secrets as they are on disk (outside swarm), and the
containers run as users other than the host's: ``--for-containers`` makes ``DIR`` 0700
and the files mounted 0644, readable in a container, not by the host's other users.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: RSA: every JVM's PEM keystore reads it (Kafka's PEM loader tries RSA, DSA, EC).
_KEY_BITS = 2048


@dataclass(frozen=True)
class DevTLS:
    """Where ``write_dev_tls`` put the files (module doc)."""

    ca_file: Path
    server_file: Path


def write_dev_tls(directory: Path, *, dns: tuple[str, ...] = (), days: int = 30) -> DevTLS:
    """Write a new CA and a server certificate for ``localhost``/``127.0.0.1`` and the
    host names ``dns``, valid for ``days`` days from an hour ago, into ``directory``
    (created; files replaced); return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "saga development CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(name) for name in ("localhost", *dns)),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_file, ca_key_file, server_file = (
        directory / "ca.pem",
        directory / "ca-key.pem",
        directory / "server.pem",
    )
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    write_private(ca_key_file, _pkcs8(ca_key))
    write_private(server_file, _pkcs8(server_key) + server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return DevTLS(ca_file, server_file)


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (replacing the file)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m sagastack.dev_certs`` (module doc)."""
    parser = argparse.ArgumentParser(prog="python -m sagastack.dev_certs", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--dns", action="append", default=[], help="another host name of the server")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--password-file",
        action="append",
        default=[],
        help="also write a random password into DIRECTORY/<this name>; again for more",
    )
    parser.add_argument(
        "--for-containers",
        action="store_true",
        help="make the directory 0700 and what a container mounts (ca.pem, server.pem, the"
        " passwords) 0644: compose mounts file secrets as they are on disk, and the"
        " containers' users are not this one",
    )
    args = parser.parse_args(argv)
    made = write_dev_tls(args.directory, dns=tuple(args.dns), days=args.days)
    print(f"{made.ca_file}: the CA clients trust; {made.server_file}: the server's key and chain")
    mounted = [made.ca_file, made.server_file]
    for name in args.password_file:
        password_file = args.directory / name
        write_private(password_file, secrets.token_urlsafe(24).encode())
        mounted.append(password_file)
        print(f"{password_file}: a random password")
    if args.for_containers:
        # the directory keeps other users of this host out; a container reaches each
        # file through its own mount, past the directory
        args.directory.chmod(0o700)
        for path in mounted:
            path.chmod(0o644)
        print(f"{args.directory}: 0700, the files containers mount 0644 (the CA's key stays 0600)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
