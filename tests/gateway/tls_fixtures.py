"""TLS for tests: the local CA and wildcard certificate that scripts/run makes (made by
the same shell function), and clients that trust that CA and nothing else."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.utils import ROOT


@dataclass(frozen=True)
class TlsFiles:
    state: Path  # what scripts/run calls PREVIEW_STATE_DIR

    @property
    def ca(self) -> Path:
        return self.state / "tls" / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.state / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.state / "tls" / "key.pem"

    def context(self, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.set_alpn_protocols(list(alpn))
        return context

    def spki(self) -> str:
        """The leaf's SPKI hash, as Chromium's --ignore-certificate-errors-spki-list takes
        it: only this certificate is accepted, any other error still fails."""
        leaf = x509.load_pem_x509_certificate(self.cert.read_bytes())
        der = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(der).digest()).decode()

    def settings(self, port: int) -> dict[str, Any]:
        """Settings of a gateway with its TLS listener on `port` (previews on https)."""
        return {
            "tls_cert": str(self.cert),
            "tls_key": str(self.key),
            "tls_bind": f"127.0.0.1:{port}",
            "preview_scheme": "https",
            "preview_port": port,
        }


def make_local_tls(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/lib.sh's ensure_local_tls with PREVIEW_STATE_DIR=`state`."""
    script = f'set -euo pipefail; . "{ROOT}/scripts/lib.sh"; ensure_local_tls'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_TLS_")}
    return subprocess.run(
        ["bash", "-c", script],
        env={**clean, "PREVIEW_STATE_DIR": str(state), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    state = tmp_path_factory.mktemp("run-state")
    make_local_tls(state)
    return TlsFiles(state)
