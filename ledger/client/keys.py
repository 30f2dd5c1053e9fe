"""Client keyring of the privacy module: pseudonymisation keys and key-encryption keys (KEKs).

The keyring is one JSON file (mode 0600, in a 0700 directory) held by managers and the pipeline, never by a
ledger node. It keeps every key ever made so that rotation does not strand data: the *active*
pseudonymisation key and KEK are used for new writes; older ones still answer searches (pseudonyms made under
an old key) and unwrap data keys wrapped before a rotation. A key id is the first 8 bytes of
HMAC-SHA256(key, "riskmask-key-id"), which identifies a key without revealing it.
"""

from __future__ import annotations

import base64
import fcntl
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

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ledger.client.privacy import auditor_key_id
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

    def _store(self, table: dict[bytes, bytes], key: bytes) -> bytes:
        """Put ``key`` into ``table`` under its id, stamp its creation time, return the id."""
        kid = key_id(key)
        table[kid] = key
        self.created[kid.hex()] = time.time()
        return kid

    def add_pseudonym_key(self, key: bytes) -> bytes:
        self.active_pseudonym = self._store(self.pseudonym_keys, key)
        return self.active_pseudonym

    def add_kek(self, key: bytes) -> bytes:
        self.active_kek = self._store(self.keks, key)
        return self.active_kek

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

    # Same shape as ledger/client/keys.py:FrameKeys.from_json: another file format (key sections, not a camera map).
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
# Auditor key pair (X25519): the pipeline seals per-face decisions to the public half; auditors hold the private

AUDITOR_KEY_FILE = "auditor.x25519"
AUDITOR_PUB_FILE = "auditor.x25519.pub"
AUDITOR_FORMAT = "riskmask-auditor-key/1"


def auditor_public_path(keys_dir: Optional[Path] = None) -> Path:
    return Path(keys_dir or default_keys_dir()) / AUDITOR_PUB_FILE


def auditor_private_path(keys_dir: Optional[Path] = None) -> Path:
    return Path(keys_dir or default_keys_dir()) / AUDITOR_KEY_FILE


def init_auditor_key(keys_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Create the auditor key pair: private key 0600 (give it to the auditors only), public key beside it."""
    path = auditor_private_path(keys_dir)
    if path.exists() and not force:
        raise KeyringError(f"auditor key already exists at {path} (refusing to overwrite keys)")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    priv = X25519PrivateKey.generate()
    raw = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    _write_private(path, json.dumps({"format": AUDITOR_FORMAT, "private_key": raw.hex(), "public_key": pub.hex()},
                                    indent=2))
    pub_path = auditor_public_path(keys_dir)
    pub_path.write_text(json.dumps({"format": AUDITOR_FORMAT, "public_key": pub.hex()}, indent=2),
                        encoding="utf-8")
    logger.info("created auditor key pair %s", path)
    return path


def _read_key_doc(path: Path, field_name: str) -> bytes:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != AUDITOR_FORMAT:
            raise KeyringError(f"{path} is not a riskmask auditor key")
        key = bytes.fromhex(doc[field_name])
    except FileNotFoundError:
        raise KeyringError(f"no auditor key at {path}: run `riskmask keys auditor`") from None
    except KeyringError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyringError(f"malformed auditor key {path}: {type(exc).__name__}") from None
    if len(key) != 32:
        raise KeyringError(f"malformed auditor key {path}: not 32 bytes")
    return key


def load_auditor_public_key(path_or_dir: Optional[Path] = None) -> bytes:
    """The auditor X25519 public key from a ``.pub`` file or a keys directory."""
    path = Path(path_or_dir) if path_or_dir is not None else auditor_public_path()
    return _read_key_doc(path / AUDITOR_PUB_FILE if path.is_dir() else path, "public_key")


def load_auditor_private_key(path_or_dir: Optional[Path] = None) -> bytes:
    """The auditor X25519 private key from its file or a keys directory; refuses a file open to others."""
    path = Path(path_or_dir) if path_or_dir is not None else auditor_private_path()
    path = path / AUDITOR_KEY_FILE if path.is_dir() else path
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KeyringError(f"auditor key {path} is accessible by others; chmod 600 it")
    return _read_key_doc(path, "private_key")


# ------------------------------------------------------------------------------------------------------------
# Per-camera frame keys (AES-256-GCM of the raw image payload on frames.raw)

FRAME_KEYS_FILE = "frame_keys.json"
FRAME_KEYS_FORMAT = "riskmask-frame-keys/1"


@dataclass
class FrameKeys:
    """Per-camera AES-256 keys: ``cameras`` maps a camera id to its active key id; ``keys`` holds every key
    (old ones stay to read frames written before a rotation)."""

    keys: dict[bytes, bytes] = field(default_factory=dict)
    cameras: dict[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"FrameKeys(keys={len(self.keys)}, cameras={len(self.cameras)})"

    def key_for(self, camera_id: str) -> Optional[tuple[bytes, bytes]]:
        """(key id, key) of a camera, or None."""
        kid = self.cameras.get(camera_id)
        return None if kid is None else (kid, self.keys[kid])

    def add_camera(self, camera_id: str) -> bytes:
        key = os.urandom(32)
        kid = key_id(key)
        self.keys[kid] = key
        self.cameras[camera_id] = kid
        return kid

    def to_json(self) -> str:
        return json.dumps({"format": FRAME_KEYS_FORMAT,
                           "keys": {k.hex(): base64.b64encode(v).decode("ascii") for k, v in self.keys.items()},
                           "cameras": {c: k.hex() for c, k in self.cameras.items()}}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FrameKeys":
        try:
            doc = json.loads(text)
            if doc.get("format") != FRAME_KEYS_FORMAT:
                raise KeyringError(f"unknown frame key file format {doc.get('format')!r}")
            out = cls()
            for kid, b64 in doc["keys"].items():
                key = base64.b64decode(b64, validate=True)
                if len(key) != 32 or key_id(key).hex() != kid:
                    raise KeyringError(f"corrupt frame key {kid!r}")
                out.keys[key_id(key)] = key
            for cam, kid in doc["cameras"].items():
                if bytes.fromhex(kid) not in out.keys:
                    raise KeyringError(f"camera {cam!r} names no key")
                out.cameras[str(cam)] = bytes.fromhex(kid)
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyringError(f"malformed frame key file: {type(exc).__name__}") from None
        return out


def frame_keys_path(keys_dir: Optional[Path] = None) -> Path:
    return Path(keys_dir or default_keys_dir()) / FRAME_KEYS_FILE


def load_frame_keys(keys_dir: Optional[Path] = None) -> FrameKeys:
    """The per-camera frame keys; refuses a file open to others. A missing file is an empty set."""
    path = frame_keys_path(keys_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        return FrameKeys()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyringError(f"frame key file {path} is accessible by others; chmod 600 it")
    return FrameKeys.from_json(path.read_text(encoding="utf-8"))


def camera_frame_key(camera_id: str, keys_dir: Optional[Path] = None, create: bool = True) -> tuple[bytes, bytes]:
    """(key id, key) of a camera, created (and saved, 0600) on first use when ``create``."""
    found = load_frame_keys(keys_dir).key_for(camera_id)
    if found is not None:
        return found
    if not create:
        raise KeyringError(f"no frame key for camera {camera_id!r} in {frame_keys_path(keys_dir)}")

    path = frame_keys_path(keys_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # cameras of one file (threads) or processes creating keys at once
        keys = load_frame_keys(keys_dir)
        if keys.key_for(camera_id) is None:
            keys.add_camera(camera_id)
            _write_private(path, keys.to_json())
            logger.info("created frame key for camera %s", camera_id)
    finally:
        os.close(lock_fd)
    found = keys.key_for(camera_id)
    assert found is not None
    return found


# ------------------------------------------------------------------------------------------------------------
# Command line


def _keys_dir_option(p) -> None:
    p.add_argument("--keys-dir", type=Path, default=None,
                   help=f"keyring directory (default: ${ENV_KEYS_DIR} or ./.riskmask/keys)")


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
    # Same shape as infra/cli.py:_register_broker: argparse declarations, one subcommand each.
    show = ksub.add_parser("show", help="print key ids and which are active (never the keys)")
    _keys_dir_option(show)
    show.set_defaults(func=_keys_show)
    aud = ksub.add_parser("auditor", help="create the auditor key pair (X25519) that audit decisions are sealed to")
    _keys_dir_option(aud)
    aud.add_argument("--force", action="store_true", help="replace an existing auditor key pair")
    aud.set_defaults(func=_keys_auditor)
    cam = ksub.add_parser("camera", help="create (or show the id of) a camera's raw-frame encryption key")
    _keys_dir_option(cam)
    cam.add_argument("camera_id", help="camera id")
    cam.set_defaults(func=_keys_camera)


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


def _keys_auditor(args) -> int:
    try:
        path = init_auditor_key(args.keys_dir, force=args.force)
        pub = load_auditor_public_key(auditor_public_path(args.keys_dir))
    except KeyringError as exc:
        raise UserError(str(exc)) from None

    print(f"auditor key pair created: {path} (mode 0600, give it to the auditors only) and "
          f"{auditor_public_path(args.keys_dir)} (for the pipeline); key id {auditor_key_id(pub).hex()}")
    return 0


def _keys_camera(args) -> int:
    camera = str(args.camera_id)
    if not camera or len(camera) > 128 or not camera.isprintable():
        raise UserError("camera id must be 1-128 printable characters")
    try:
        kid, _ = camera_frame_key(camera, args.keys_dir, create=True)
    except KeyringError as exc:
        raise UserError(str(exc)) from None
    print(f"camera {camera}: frame key {kid.hex()} in {frame_keys_path(args.keys_dir)}")
    return 0
