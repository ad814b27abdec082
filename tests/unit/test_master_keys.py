"""The master keys of personal data as the order service reads them
(``saga_kit.personal_data.load_keystore``, ``order_svc.settings.Settings.keystore``): the
rotation's settings; over a database: tests/integration/test_master_key_rotation.py."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from order_svc.settings import Settings
from saga_kit.personal_data import (
    KEY_BYTES,
    MasterKey,
    MasterKeyError,
    load_keystore,
    write_dev_master_key,
)


def _key_file(path: Path, key: bytes | None = None) -> Path:
    path.write_text(json.dumps({"key": base64.b64encode(key or secrets.token_bytes(KEY_BYTES)).decode()}))
    return path


def test_a_master_key_is_named_by_a_fingerprint_that_is_not_the_key() -> None:
    key = secrets.token_bytes(KEY_BYTES)
    named = MasterKey.of(key)
    assert named == MasterKey.of(key) and len(named.key_id) == 16 and int(named.key_id, 16) >= 0
    assert named.key_id != MasterKey.of(secrets.token_bytes(KEY_BYTES)).key_id
    assert key.hex()[:16] not in repr(named) and "key=" not in repr(named)


def test_previous_master_keys_unwrap_only_beside_a_master_key(tmp_path: Path) -> None:
    old, new = _key_file(tmp_path / "old.json"), _key_file(tmp_path / "new.json")
    store = load_keystore(str(new), [str(old), str(new)], production=False)
    assert store is not None
    assert store.current.key_id != store.previous[0].key_id and len(store.previous) == 1  # itself: once
    assert load_keystore(None, production=False) is None
    with pytest.raises(MasterKeyError, match="PREVIOUS_MASTER_KEY_FILES needs ORDER_PII_MASTER_KEY_FILE"):
        load_keystore(None, [str(old)], production=False)
    with pytest.raises(MasterKeyError, match=r"missing\.json"):
        load_keystore(str(new), [str(tmp_path / "missing.json")], production=False)
    dev = write_dev_master_key(tmp_path / "dev.json")
    with pytest.raises(MasterKeyError, match="refuses the development master key"):
        load_keystore(str(new), [str(dev)], production=True)


def test_the_settings_read_previous_master_keys_as_a_comma_separated_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, older, new = (_key_file(tmp_path / f"{n}.json") for n in ("old", "older", "new"))
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/orders")
    monkeypatch.setenv("ORDER_PII_MASTER_KEY_FILE", str(new))
    monkeypatch.setenv("ORDER_PII_PREVIOUS_MASTER_KEY_FILES", f" {old}, ,{older} ")
    settings = Settings()
    assert settings.previous_master_key_files() == [str(old), str(older)]
    store = settings.keystore
    assert store is not None and len(store.previous) == 2
    monkeypatch.setenv("ORDER_PII_PREVIOUS_MASTER_KEY_FILES", "")
    store = Settings().keystore
    assert store is not None and store.previous == ()


def test_the_keys_are_read_once_and_a_previous_file_is_named_by_its_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator trial: the rewrap job read the key files again each run while the HTTP
    API kept the keys it started with — files edited under a running service had the job
    rewrap every data key with a key the API did not have, and a key file destroyed
    before the restart was a traceback each run. A missing previous file said only "the
    master key", and a key given twice was listed twice."""
    old, new = _key_file(tmp_path / "old.json"), _key_file(tmp_path / "new.json")
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/orders")
    monkeypatch.setenv("ORDER_PII_MASTER_KEY_FILE", str(new))
    monkeypatch.setenv("ORDER_PII_PREVIOUS_MASTER_KEY_FILES", f"{old},{old}")
    settings = Settings()
    first = settings.keystore
    assert first is not None and len(first.previous) == 1
    ids = first.current.key_id, first.previous[0].key_id
    _key_file(new)  # edited under the running service
    old.unlink()  # destroyed before the restart
    again = settings.keystore
    assert again is first and (again.current.key_id, again.previous[0].key_id) == ids
    with pytest.raises(MasterKeyError, match=r"^ORDER_PII_PREVIOUS_MASTER_KEY_FILES: cannot read"):
        load_keystore(str(new), [str(old)], production=False)
