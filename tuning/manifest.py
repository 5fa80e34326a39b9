"""A signed manifest of the files Ray Tune unpickles when a search resumes.

`Tuner.restore` unpickles `tuner.pkl`, the searcher's and the search generator's state and
the cloudpickle fields of `experiment_state-*.json`: whoever wrote those files chooses what
runs. So while a search runs, headsweep records the SHA-256 of each of them in
`headsweep-manifest.json`, signed with an HMAC under a key that never leaves this machine
(`~/.config/headsweep/manifest.key`, made on first use, mode 0600; `HEADSWEEP_KEY_FILE`
names another). Before `--resume` unpickles anything, `verify` checks every such file of the
experiment against the manifest and refuses, naming the file, when one differs, is missing or
is not listed, or when the manifest was not signed with this key (a folder received from
someone else; a truncated or edited state file).

A plain list of hashes would not do: whoever crafts the folder can write it too. The last
`KEEP` hashes of each file are kept, because Ray copies its state into the folder file by
file: a driver killed during a copy leaves the newest hash of one file beside the previous one
of another, and both were written by this search.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

MANIFEST_FILE = "headsweep-manifest.json"
TUNER_FILE = "tuner.pkl"  # Ray's Tuner, written into the experiment when the search starts
KEEP = 3
NOT_STATE = {"spec.json", MANIFEST_FILE}  # headsweep's own JSON, read as JSON only


class UntrustedStateError(ValueError):
    """An experiment's resume state that headsweep did not record: resuming would unpickle it."""


def key_file() -> Path:
    return Path(os.environ.get("HEADSWEEP_KEY_FILE") or Path.home() / ".config" / "headsweep" / "manifest.key")


def load_key(create: bool = False) -> bytes | None:
    path = key_file()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # O_EXCL: two searches, one key
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def is_state_file(name: str) -> bool:
    """A top-level file Ray Tune's restore may unpickle (its state is .pkl and .json files)."""
    return name.endswith((".pkl", ".json")) and name not in NOT_STATE and not name.startswith(".")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signature(files: dict[str, list[str]], key: bytes) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _signed_files(raw: bytes, key: bytes) -> dict[str, list[str]] | None:
    """The manifest's file list if its signature is this key's, else None."""
    try:
        manifest = json.loads(raw)
        files, sig = manifest["files"], manifest["signature"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not isinstance(sig, str):
        return None
    return files if hmac.compare_digest(sig, signature(files, key)) else None


def record(folder: Path, extra: dict[str, bytes] | None = None) -> None:
    """Write `folder`'s manifest: the hash of each state file in it (and of `extra`, name ->
    content, for files kept elsewhere), after the hashes it already listed."""
    key = load_key(create=True)
    path = folder / MANIFEST_FILE
    files = (_signed_files(path.read_bytes(), key) if path.exists() else None) or {}
    current = {p.name: digest(p.read_bytes()) for p in folder.iterdir() if p.is_file() and is_state_file(p.name)}
    current.update({name: digest(data) for name, data in (extra or {}).items()})
    for name, h in current.items():
        history = [x for x in files.get(name, []) if x != h]
        files[name] = (history + [h])[-KEEP:]
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"files": files, "signature": signature(files, key)}, indent=1, sort_keys=True))
    os.replace(tmp, path)  # never half a manifest


def verify(fs, path: str) -> int:
    """Check the experiment at `path` (on the pyarrow filesystem `fs`) before anything in it is
    unpickled; raise UntrustedStateError naming the first file that fails. Returns the files checked."""
    import pyarrow.fs

    where = path.rstrip("/")
    names = {i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(where))
             if i.type == pyarrow.fs.FileType.File}
    key = load_key()
    if MANIFEST_FILE not in names:
        raise UntrustedStateError(f"{where}/{MANIFEST_FILE} is missing: this experiment's resume state was not "
                                  "recorded by headsweep (an older or foreign folder, or a search stopped before "
                                  "its first save); resuming would unpickle its files, so it is refused")
    files = _signed_files(_read(fs, f"{where}/{MANIFEST_FILE}"), key) if key else None
    if files is None:
        raise UntrustedStateError(f"{where}/{MANIFEST_FILE} is not signed with this machine's key {key_file()}: "
                                  "the experiment was written elsewhere or its manifest was edited; resuming "
                                  "would unpickle its files, so it is refused")
    for name in sorted(n for n in names if is_state_file(n)):
        if name not in files:
            raise UntrustedStateError(f"{where}/{name} is not in the experiment's manifest: resuming would "
                                      "unpickle a file headsweep did not write, so it is refused")
        if digest(_read(fs, f"{where}/{name}")) not in files[name]:
            raise UntrustedStateError(f"{where}/{name} differs from what headsweep recorded (SHA-256): it was "
                                      "changed or truncated after the search wrote it; resuming is refused")
    missing = sorted(set(files) - names)
    if missing:
        raise UntrustedStateError(f"{where}/{missing[0]} is missing (the manifest lists it): resuming without "
                                  "it would lose the search's state, so it is refused")
    return len(files)


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()
