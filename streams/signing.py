"""Ed25519 signatures on erasure commands, so that a sink can tell the pipeline's from a forgery.

Anyone who can write to `erasure-commands` could otherwise wipe a person's data. The
worker signs every command with the private key in the secrets folder; a sink needs only
the public key. What is signed is the command's canonical JSON (sorted keys, no spaces,
UTF-8) without its `signature` field: every other field, `attempt` included, so a
re-issued command is signed anew and a changed field breaks the signature.

Key files (design.md, "Secrets"): ``DIR/command-signing.key`` (PKCS#8 PEM, mode 0600)
and ``DIR/command-signing.pub`` (SubjectPublicKeyInfo PEM). The worker creates them
when they are missing; several workers starting at once agree on one key (the private
key file is created atomically, and the public one is always derived from it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "CommandSigner",
    "CommandVerifier",
    "SigningKeyError",
    "signing_bytes",
]

PRIVATE_KEY_FILE: Final = "command-signing.key"
PUBLIC_KEY_FILE: Final = "command-signing.pub"
SIGNATURE_FIELD: Final = "signature"


class SigningKeyError(RuntimeError):
    """A key file that is missing, unreadable or not an Ed25519 key (names the file)."""


def signing_bytes(command: Mapping[str, Any]) -> bytes:
    """The bytes a command's signature covers: canonical JSON of all fields but `signature`."""
    fields = {k: v for k, v in command.items() if k != SIGNATURE_FIELD}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CommandSigner:
    """Signs commands with the pipeline's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_secrets(cls, secrets: Path) -> CommandSigner:
        """The signer of *secrets*; creates the key pair there when it is missing."""
        secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = secrets / PRIVATE_KEY_FILE
        if not private.exists():
            _create_exclusively(private, _new_private_pem())
        key = _load_private(private)
        public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        public = secrets / PUBLIC_KEY_FILE
        if not public.exists() or public.read_bytes() != public_pem:
            _replace(public, public_pem, mode=0o644)
        return cls(key)

    def sign(self, command: Mapping[str, Any]) -> bytes:
        """The signature of *command* (its `signature` field, if any, is not covered)."""
        return self._key.sign(signing_bytes(command))

    @property
    def verifier(self) -> CommandVerifier:
        """A verifier for this signer's signatures."""
        return CommandVerifier(self._key.public_key())


class CommandVerifier:
    """Checks commands against the pipeline's public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_secrets(cls, secrets: Path) -> CommandVerifier:
        """The verifier of the public key in *secrets* (SigningKeyError when it is missing)."""
        path = secrets / PUBLIC_KEY_FILE
        try:
            key = load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read the public key: {exc.strerror}") from None
        except ValueError:
            raise SigningKeyError(f"{path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{path}: not an Ed25519 public key")
        return cls(key)

    def verify(self, command: Mapping[str, Any]) -> bool:
        """True when *command* carries a valid signature of the pipeline's key."""
        signature = command.get(SIGNATURE_FIELD)
        if not isinstance(signature, bytes):
            return False
        try:
            self._key.verify(signature, signing_bytes(command))
        except InvalidSignature:
            return False
        return True


def _new_private_pem() -> bytes:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 private key")
    return key


def _create_exclusively(path: Path, content: bytes) -> None:
    """Write *path* whole, or leave the one another process wrote first."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if another process linked first
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _replace(path: Path, content: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
