"""A signed manifest of the files Ray Tune unpickles when a search resumes, and a copy of the
last whole save to fall back on.

`Tuner.restore` unpickles `tuner.pkl`, the searcher's and the search generator's state and
the cloudpickle fields of `experiment_state-*.json`: whoever wrote those files chooses what
runs. So while a search runs, headsweep records the SHA-256 of each of them in
`headsweep-manifest.json`, signed with an HMAC under a key that never leaves this machine
(`~/.config/headsweep/manifest.key`, made on first use, mode 0600; `HEADSWEEP_KEY_FILE`
names another). Before `--resume` unpickles anything, `verify` checks every such file of the
experiment against the manifest and refuses, naming the file, when one differs, is missing or
is not listed, or when the manifest was not signed with this key (a folder received from
someone else; an edited state file). A plain list of hashes would not do: whoever crafts the
folder can write it too.

Ray saves into a staging folder and then copies it into the experiment, file by file and not
atomically, in a background thread. A driver killed during that copy left a truncated file, or
the newest save of one file beside the previous save of another (one trial too many on
resume). So before each copy:
- `record` writes the manifest straight into the experiment, atomically (never through Ray's
  copy), listing the staged hashes about to land beside the last `KEEP` ones of each file, and
  keeps a copy of each state file already in the experiment that the manifest vouches for (a
  whole save) in `BACKUP_DIR`, written atomically too;
- `publish` moves the staged state files into the experiment itself, each written whole, one
  right after the other, and takes them out of Ray's copy.
`repair` puts a kept copy back in place of a file the manifest does not vouch for or that is
missing, before `verify` runs: a killed search resumes instead of being refused.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickletools
import secrets
from pathlib import Path

MANIFEST_FILE = "headsweep-manifest.json"
BACKUP_DIR = ".headsweep-last-save"  # not a state file (a folder), never copied by Ray
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:  # a link, not a rename: of two searches making it at once, the first wins and both read it
            os.link(tmp, path)
        except FileExistsError:
            pass
        os.unlink(tmp)
    return path.read_bytes().strip()


def is_state_file(name: str) -> bool:
    """A top-level file Ray Tune's restore may unpickle (its state is .pkl and .json files)."""
    return name.endswith((".pkl", ".json")) and name not in NOT_STATE and not name.startswith(".")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signature(files: dict[str, list[str]], key: bytes) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _signed_files(raw: bytes | None, key: bytes | None) -> dict[str, list[str]] | None:
    """The manifest's file list if its signature is this key's, else None."""
    if raw is None or key is None:
        return None
    try:
        manifest = json.loads(raw)
        files, sig = manifest["files"], manifest["signature"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not isinstance(sig, str):
        return None
    return files if hmac.compare_digest(sig, signature(files, key)) else None


# ----------------------------------------------------------------------------- files on the storage
def _read(fs, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def _write(fs, path: str, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file moved into place."""
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def _state_files(fs, where: str) -> dict[str, bytes]:
    """The state files at the top of `where`, name -> content."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(where, allow_not_found=True))
    found = {i.base_name: _read(fs, i.path) for i in infos
             if i.type == pyarrow.fs.FileType.File and is_state_file(i.base_name)}
    return {name: data for name, data in found.items() if data is not None}


def _backup(where: str, name: str) -> str:
    return f"{where}/{BACKUP_DIR}/{name}"


def record(fs, where: str, staging: Path | None = None) -> dict[str, bytes]:
    """Before the state Ray staged in `staging` (a local folder) lands in the experiment `where`
    (on the pyarrow filesystem `fs`): sign the hashes of the staged files and of those already
    there that are not staged (Ray writes tuner.pkl straight into the experiment), then keep a
    copy of each file there that the manifest vouched for. Without `staging`, the files in
    `where` are recorded. Returns the staged state files, name -> content (for `publish`)."""
    key = load_key(create=True)
    where = where.rstrip("/")
    files = _signed_files(_read(fs, f"{where}/{MANIFEST_FILE}"), key) or {}
    stored = _state_files(fs, where)
    staged = {p.name: p.read_bytes() for p in staging.iterdir()
              if p.is_file() and is_state_file(p.name)} if staging else {}
    whole = {name: data for name, data in stored.items() if digest(data) in files.get(name, ())}
    kept = {name: digest(data) for name, data in _state_files(fs, f"{where}/{BACKUP_DIR}").items()}
    for name, data in {**stored, **staged}.items():
        h = digest(data)
        history = [x for x in files.get(name, []) if x != h][-(KEEP - 1):] + [h]
        # the copy in place now and the one about to replace it stay listed until both are gone
        for old in (kept.get(name), digest(whole[name]) if name in whole else None):
            if old in files.get(name, ()) and old not in history:
                history.insert(0, old)
        files[name] = history
    # The manifest first: whatever lands after it, the backups and Ray's copy, is listed in it.
    _write(fs, f"{where}/{MANIFEST_FILE}",
           json.dumps({"files": files, "signature": signature(files, key)}, indent=1, sort_keys=True).encode())
    for name, data in whole.items():
        if kept.get(name) != digest(data):
            _write(fs, _backup(where, name), data)
    return staged


def publish(fs, where: str, staging: Path, staged: dict[str, bytes]) -> list[str]:
    """Move the state files Ray staged (`staged`, as `record` read and listed them) into the
    experiment, each written whole (a temporary file moved into place) and then removed from
    staging, so Ray's own copy, file by file and not atomically, never writes them: a driver
    killed at any moment leaves each file either the previous save's or this one's, never cut
    short."""
    names = sorted(staged)
    for name in names:
        _write(fs, f"{where.rstrip('/')}/{name}", staged[name])
        (staging / name).unlink()
    return names


def torn(name: str, data: bytes) -> bool:
    """Provably cut short: JSON that does not parse, or a pickle whose opcodes end before a STOP (read
    with pickletools, which runs nothing). A file that parses whole but differs was changed, not cut."""
    if name.endswith(".json"):
        try:
            json.loads(data)
            return False
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return True
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - genops raises ValueError, KeyError, ... on a cut stream
        return True
    return not ops or ops[-1][0].name != "STOP"


def repair(fs, where: str) -> list[str]:
    """Put the kept copy of the last whole save (`record`) back in place of each state file that a
    killed driver's copy left cut short (`torn`) or missing. A file that parses whole but that the
    signed manifest does not vouch for was changed after the search wrote it: it stays, and `verify`
    refuses it (putting the older save back would roll the experiment back past what Optuna and the
    trial folders already hold). Returns the names put back; does nothing when the manifest is not
    signed with this key (`verify` refuses then)."""
    where = where.rstrip("/")
    files = _signed_files(_read(fs, f"{where}/{MANIFEST_FILE}"), load_key())
    if files is None:
        return []
    stored, kept = _state_files(fs, where), _state_files(fs, f"{where}/{BACKUP_DIR}")
    repaired = []
    for name, hashes in sorted(files.items()):
        cut = name not in stored or (digest(stored[name]) not in hashes and torn(name, stored[name]))
        if cut and name in kept and digest(kept[name]) in hashes:
            _write(fs, f"{where}/{name}", kept[name])
            repaired.append(name)
    return repaired


def verify(fs, path: str) -> int:
    """Check the experiment at `path` (on the pyarrow filesystem `fs`) before anything in it is
    unpickled; raise UntrustedStateError naming the first file that fails. Returns the files checked."""
    import pyarrow.fs

    where = path.rstrip("/")
    names = {i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(where))
             if i.type == pyarrow.fs.FileType.File}
    if MANIFEST_FILE not in names:
        raise UntrustedStateError(f"{where}/{MANIFEST_FILE} is missing: this experiment's resume state was not "
                                  "recorded by headsweep (an older or foreign folder, or a search stopped before "
                                  "its first save); resuming would unpickle its files, so it is refused")
    files = _signed_files(_read(fs, f"{where}/{MANIFEST_FILE}"), load_key())
    if files is None:
        raise UntrustedStateError(f"{where}/{MANIFEST_FILE} is not signed with this machine's key {key_file()}: "
                                  "the experiment was written elsewhere or its manifest was edited; resuming "
                                  "would unpickle its files, so it is refused")
    for name in sorted(n for n in names if is_state_file(n)):
        if name not in files:
            raise UntrustedStateError(f"{where}/{name} is not in the experiment's manifest: resuming would "
                                      "unpickle a file headsweep did not write, so it is refused")
        if digest(_read(fs, f"{where}/{name}") or b"") not in files[name]:
            raise UntrustedStateError(f"{where}/{name} differs from what headsweep recorded (SHA-256): it was "
                                      "changed or truncated after the search wrote it; resuming is refused")
    missing = sorted(set(files) - names)
    if missing:
        raise UntrustedStateError(f"{where}/{missing[0]} is missing (the manifest lists it): resuming without "
                                  "it would lose the search's state, so it is refused")
    return len(files)
