"""Command signatures: keys created once, shared by concurrent workers, forgeries refused."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from privacy_pipeline.streams.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    CommandSigner,
    CommandVerifier,
    SigningKeyError,
    signing_bytes,
)

COMMAND = {"command_id": "c1", "subject_id": "åsa", "attempt": 1, "categories": ["contact"]}


def test_keys_are_created_once_private_key_unreadable_by_others(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    first = CommandSigner.from_secrets(secrets)
    key = (secrets / PRIVATE_KEY_FILE).read_bytes()
    assert stat.S_IMODE((secrets / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    second = CommandSigner.from_secrets(secrets)  # a restart keeps the key
    assert (secrets / PRIVATE_KEY_FILE).read_bytes() == key
    assert second.sign(COMMAND) == first.sign(COMMAND)  # Ed25519 is deterministic


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        signers = list(pool.map(lambda _: CommandSigner.from_secrets(tmp_path), range(8)))
    verifier = CommandVerifier.from_secrets(tmp_path)
    assert all(verifier.verify({**COMMAND, "signature": s.sign(COMMAND)}) for s in signers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]


def test_signature_covers_every_field_but_itself() -> None:
    assert signing_bytes({**COMMAND, "signature": b"x"}) == signing_bytes(COMMAND)
    assert signing_bytes({"b": 1, "a": 2}) == b'{"a":2,"b":1}'


def test_a_missing_or_wrong_public_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match=PUBLIC_KEY_FILE):
        CommandVerifier.from_secrets(tmp_path)
    (tmp_path / PUBLIC_KEY_FILE).write_text("not a key")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        CommandVerifier.from_secrets(tmp_path)
