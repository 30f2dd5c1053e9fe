"""Client keyring of the privacy module: pseudonymisation keys and key-encryption keys (KEKs).

The keyring is one JSON file (mode 0600, in a 0700 directory) held by managers and the pipeline, never by a
ledger node. It keeps every key ever made so that rotation does not strand data: the *active*
pseudonymisation key and KEK are used for new writes; older ones still answer searches (pseudonyms made under
an old key) and unwrap data keys wrapped before a rotation. A key id is the first 8 bytes of
HMAC-SHA256(key, "riskmask-key-id"), which identifies a key without revealing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from riskmask.errors import UserError

logger = logging.getLogger(__name__)

KEYRING_FORMAT = "riskmask-keyring/1"
KEYRING_FILE = "keyring.json"
ENV_KEYS_DIR = "RISKMASK_KEYS_DIR"


class KeyringError(Exception):
    """The keyring is missing, unreadable, too open (permissions) or malformed."""


def key_id(key: bytes) -> bytes:
    """8-byte identifier of a key (keyed hash: reveals nothing about the key)."""
    return hmac.new(key, b"riskmask-key-id", hashlib.sha256).digest()[:8]


def default_keys_dir() -> Path:
    """``$RISKMASK_KEYS_DIR``, else ``keys/`` under the local stack's root (``$RISKMASK_HOME`` or ``./.riskmask``)."""
    env = os.environ.get(ENV_KEYS_DIR)
    return Path(env) if env else Path(os.environ.get("RISKMASK_HOME") or ".riskmask") / "keys"


@dataclass
class Keyring:
    """All privacy keys of one deployment; ``active_*`` select the keys used for new writes."""

    pseudonym_keys: dict[bytes, bytes] = field(default_factory=dict)
    keks: dict[bytes, bytes] = field(default_factory=dict)
    active_pseudonym: bytes = b""
    active_kek: bytes = b""
    created: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Keyring(pseudonym_keys={len(self.pseudonym_keys)}, keks={len(self.keks)}, "
                f"active_pseudonym={self.active_pseudonym.hex()}, active_kek={self.active_kek.hex()})")

    @classmethod
    def generate(cls) -> "Keyring":
        ring = cls()
        ring.add_pseudonym_key(os.urandom(32))
        ring.add_kek(os.urandom(32))
        return ring

    def add_pseudonym_key(self, key: bytes) -> bytes:
        kid = key_id(key)
        self.pseudonym_keys[kid] = key
        self.active_pseudonym = kid
        self.created[kid.hex()] = time.time()
        return kid

    def add_kek(self, key: bytes) -> bytes:
        kid = key_id(key)
        self.keks[kid] = key
        self.active_kek = kid
        self.created[kid.hex()] = time.time()
        return kid

    @property
    def pseudonym_key(self) -> bytes:
        return self.pseudonym_keys[self.active_pseudonym]

    @property
    def kek(self) -> bytes:
        return self.keks[self.active_kek]

    def kek_for(self, kid: bytes) -> bytes:
        try:
            return self.keks[kid]
        except KeyError:
            raise KeyringError(f"key-encryption key {kid.hex()} is not in this keyring") from None

    def search_keys(self) -> list[tuple[bytes, bytes]]:
        """(id, key) of every pseudonymisation key, active first: searches try all of them."""
        rest = [(k, v) for k, v in self.pseudonym_keys.items() if k != self.active_pseudonym]
        return [(self.active_pseudonym, self.pseudonym_key)] + rest

    def to_json(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return json.dumps({
            "format": KEYRING_FORMAT,
            "active_pseudonym": self.active_pseudonym.hex(),
            "active_kek": self.active_kek.hex(),
            "pseudonym_keys": [{"id": k.hex(), "key": b64(v), "created": self.created.get(k.hex(), 0)}
                               for k, v in self.pseudonym_keys.items()],
            "keks": [{"id": k.hex(), "key": b64(v), "created": self.created.get(k.hex(), 0)}
                     for k, v in self.keks.items()],
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Keyring":
        try:
            doc = json.loads(text)
            if doc.get("format") != KEYRING_FORMAT:
                raise KeyringError(f"unknown keyring format {doc.get('format')!r}")
            ring = cls()
            for section, table in (("pseudonym_keys", ring.pseudonym_keys), ("keks", ring.keks)):
                for entry in doc[section]:
                    key = base64.b64decode(entry["key"], validate=True)
                    if len(key) != 32 or key_id(key).hex() != entry["id"]:
                        raise KeyringError(f"corrupt key {entry.get('id')!r} in {section}")
                    table[key_id(key)] = key
                    ring.created[entry["id"]] = float(entry.get("created", 0))
            ring.active_pseudonym = bytes.fromhex(doc["active_pseudonym"])
            ring.active_kek = bytes.fromhex(doc["active_kek"])
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"malformed keyring: {type(exc).__name__}") from None
        if ring.active_pseudonym not in ring.pseudonym_keys or ring.active_kek not in ring.keks:
            raise KeyringError("keyring's active key ids name no key")
        return ring


def keyring_path(keys_dir: Optional[Path] = None) -> Path:
    return Path(keys_dir or default_keys_dir()) / KEYRING_FILE


def _write_private(path: Path, text: str) -> None:
    """Write atomically with 0600 permissions from the first byte (no window where others can read)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def init_keyring(keys_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Create a fresh keyring; refuses to overwrite an existing one unless ``force``."""
    path = keyring_path(keys_dir)
    if path.exists() and not force:
        raise KeyringError(f"keyring already exists at {path} (refusing to overwrite keys)")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _write_private(path, Keyring.generate().to_json())
    logger.info("created keyring %s", path)
    return path


def save_keyring(ring: Keyring, keys_dir: Optional[Path] = None) -> Path:
    path = keyring_path(keys_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, ring.to_json())
    return path


def load_keyring(keys_dir: Optional[Path] = None) -> Keyring:
    """Load the keyring; refuses a file readable or writable by group/others."""
    path = keyring_path(keys_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyringError(f"no keyring at {path}: run `riskmask keys init`") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyringError(f"keyring {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
                           "chmod 600 it")
    return Keyring.from_json(path.read_text(encoding="utf-8"))


def rotate(keys_dir: Optional[Path] = None, kek: bool = True, pseudonym_key: bool = False) -> Keyring:
    """Add new active keys, keeping the old ones for reading (see docs/privacy.md, rotation)."""
    ring = load_keyring(keys_dir)
    if kek:
        ring.add_kek(os.urandom(32))
    if pseudonym_key:
        ring.add_pseudonym_key(os.urandom(32))
    save_keyring(ring, keys_dir)
    return ring


# ------------------------------------------------------------------------------------------------------------
# Command line


def _keys_dir_option(p) -> None:
    p.add_argument("--keys-dir", type=Path, default=None,
                   help=f"keyring directory (default: ${ENV_KEYS_DIR} or ~/.riskmask/keys)")


def add_commands(sub) -> None:
    """``riskmask keys init|rotate|show``."""
    p = sub.add_parser("keys", help="privacy keys: pseudonymisation key and key-encryption key (client side)",
                       description="Create, rotate or describe the privacy keyring. Ledger nodes never hold it.")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    init = ksub.add_parser("init", help="create a new keyring (0600) with fresh random keys")
    _keys_dir_option(init)
    init.add_argument("--force", action="store_true", help="overwrite an existing keyring (destroys its keys!)")
    init.set_defaults(func=_keys_init)
    rot = ksub.add_parser("rotate", help="add a new active key-encryption key (and optionally pseudonym key)")
    _keys_dir_option(rot)
    rot.add_argument("--pseudonym-key", action="store_true",
                     help="also start a new pseudonymisation key (old pseudonyms stay searchable)")
    rot.set_defaults(func=_keys_rotate)
    show = ksub.add_parser("show", help="print key ids and which are active (never the keys)")
    _keys_dir_option(show)
    show.set_defaults(func=_keys_show)


def load_keys(keys_dir: Optional[Path]) -> Keyring:
    try:
        return load_keyring(keys_dir)
    except KeyringError as exc:
        raise UserError(str(exc)) from None


def _keys_init(args) -> int:
    try:
        path = init_keyring(args.keys_dir, force=args.force)
    except KeyringError as exc:
        raise UserError(str(exc)) from None
    print(f"keyring created: {path} (mode 0600); keep a backup offline, never copy it to a ledger node")
    return 0


def _keys_rotate(args) -> int:
    load_keys(args.keys_dir)
    ring = rotate(args.keys_dir, kek=True, pseudonym_key=args.pseudonym_key)
    print(f"active kek {ring.active_kek.hex()}, active pseudonym key {ring.active_pseudonym.hex()}; "
          "run `riskmask rewrap` to move existing records to the new kek")
    return 0


def _keys_show(args) -> int:
    ring = load_keys(args.keys_dir)
    print(json.dumps({"active_kek": ring.active_kek.hex(), "active_pseudonym_key": ring.active_pseudonym.hex(),
                      "keks": [k.hex() for k in ring.keks], "pseudonym_keys": [k.hex() for k in ring.pseudonym_keys]},
                     indent=2))
    return 0
