"""Validated configuration of a ledger cluster: genesis, client registry and per-node settings.

Three JSON files describe a cluster (``riskmask ledger init`` writes them):

* ``genesis.json`` — chain id, creation time and the fixed validator set (index, Ed25519 public key, p2p and
  API addresses). Every node and every auditor must hold the same genesis; its hash is part of the chain.
* ``clients.json`` — the client registry: Ed25519 public key -> role (manager, pipeline, auditor, validator).
  Every API request is signed by one of these keys and authorised by its role.
* ``nodeN.json`` — one node's settings: which validator it is, its key file, data directory, listen addresses,
  consensus timeouts and block limits.

Loading anything malformed raises :class:`ConfigError` with one readable reason naming the file and field.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ledger.consensus.events import ConsensusParams
from ledger.registry import kinds

_CONSENSUS = ConsensusParams()  # one source for the timeout defaults: the state machine's own

# Roles and which transaction kinds each may submit come from the one table of transaction kinds
# (ledger.registry.kinds), enforced at admission, on gossip, in proposals, on apply and by the auditor.
ROLES = kinds.ROLES
SUBMIT_KINDS: Mapping[str, frozenset[str]] = kinds.SUBMIT_KINDS
GENESIS_FORMAT = "riskmask-ledger-genesis/1"
CLIENTS_FORMAT = "riskmask-ledger-clients/1"
NODE_FORMAT = "riskmask-ledger-node/1"
KEY_FORMAT = "riskmask-ledger-key/1"
MAX_VALIDATORS = 64


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message is one readable line."""


def _fail(where: str, reason: str) -> ConfigError:
    return ConfigError(f"{where}: {reason}")


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _is_dns_name(host: str) -> bool:
    """A lower-case DNS host name (RFC 1123 labels), e.g. ``ledger-0.ledger.riskmask.svc.cluster.local``."""
    labels = host.split(".")
    return (len(host) <= 253 and not labels[-1].isdigit()
            and all(_DNS_LABEL.fullmatch(label) for label in labels))


def parse_address(text: Any, where: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); host is an IP literal or a lower-case DNS name (``localhost``, or a
    Kubernetes service name such as ``ledger-0.ledger.riskmask.svc.cluster.local``, whose IP may change)."""
    if not isinstance(text, str) or ":" not in text:
        raise _fail(where, f"address must be 'host:port', got {text!r}")
    host, _, port_s = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _is_dns_name(host):
            raise _fail(where, f"host must be an IP address or a lower-case DNS name, got {host!r}") from None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise _fail(where, f"port must be 0..65535, got {port_s!r}")
    return host, int(port_s)


def split_api_address(text: Any, where: str) -> tuple[str, str, int]:
    """An API address ``[http://|https://]host:port`` -> (scheme, host, port); no scheme means ``http``.

    Genesis names ``https://host:port`` for a node that serves its API over TLS (``ledger init --api-tls``),
    so every client built from the genesis speaks HTTPS to it.
    """
    scheme = "http"
    if isinstance(text, str) and "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("http", "https"):
            raise _fail(where, f"scheme must be http:// or https://, got {scheme!r}")
    host, port = parse_address(text, where)
    return scheme, host, port


def _hex_key(value: Any, where: str, length: int = 32) -> bytes:
    if not isinstance(value, str):
        raise _fail(where, "must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _fail(where, "is not valid hex") from None
    if len(raw) != length:
        raise _fail(where, f"must be {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw


def _read_json(path: Path, what: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold a JSON object")
    return data


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) used for hashing config documents."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class ValidatorInfo:
    """One authority node as fixed by genesis."""

    index: int
    public_key: bytes
    p2p_address: str
    api_address: str

    @property
    def p2p_hostport(self) -> tuple[str, int]:
        return parse_address(self.p2p_address, f"validator {self.index} p2p_address")

    @property
    def api_hostport(self) -> tuple[str, int]:
        _, host, port = split_api_address(self.api_address, f"validator {self.index} api_address")
        return host, port

    @property
    def api_tls(self) -> bool:
        """True when genesis names this node's API as ``https://`` (the node serves TLS only)."""
        return split_api_address(self.api_address, f"validator {self.index} api_address")[0] == "https"

    def to_dict(self) -> dict:
        return {"index": self.index, "public_key": self.public_key.hex(),
                "p2p_address": self.p2p_address, "api_address": self.api_address}


@dataclass(frozen=True)
class Genesis:
    """The chain's fixed starting point: chain id and validator set (n = 3f + 1 tolerates f faults)."""

    chain_id: str
    genesis_time: int  # unix milliseconds
    validators: tuple[ValidatorInfo, ...]

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        """Faulty validators tolerated."""
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """Votes needed for a quorum (2f + 1 for n = 3f + 1; in general floor(2n/3) + 1)."""
        return (2 * self.n) // 3 + 1

    def public_keys(self) -> list[bytes]:
        return [v.public_key for v in self.validators]

    def to_dict(self) -> dict:
        return {"format": GENESIS_FORMAT, "chain_id": self.chain_id, "genesis_time": self.genesis_time,
                "validators": [v.to_dict() for v in self.validators]}

    def hash(self) -> bytes:
        """SHA-256 of the canonical genesis document (binds every chain to its validator set)."""
        return hashlib.sha256(canonical_json(self.to_dict())).digest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "genesis") -> "Genesis":
        if data.get("format", GENESIS_FORMAT) != GENESIS_FORMAT:
            raise _fail(where, f"unsupported format {data.get('format')!r} (expected {GENESIS_FORMAT})")
        chain_id = data.get("chain_id")
        if not isinstance(chain_id, str) or not 1 <= len(chain_id) <= 64 or not chain_id.isprintable():
            raise _fail(where, "chain_id must be a printable string of 1..64 characters")
        gtime = data.get("genesis_time", 0)
        if not isinstance(gtime, int) or isinstance(gtime, bool) or gtime < 0:
            raise _fail(where, "genesis_time must be a non-negative integer (unix ms)")
        raw_vals = data.get("validators")
        if not isinstance(raw_vals, list) or not raw_vals:
            raise _fail(where, "validators must be a non-empty list")
        if len(raw_vals) > MAX_VALIDATORS:
            raise _fail(where, f"at most {MAX_VALIDATORS} validators are supported")
        vals = []
        for pos, rv in enumerate(raw_vals):
            w = f"{where} validators[{pos}]"
            if not isinstance(rv, dict):
                raise _fail(w, "must be an object")
            if rv.get("index") != pos:
                raise _fail(w, f"index must be {pos} (validators are listed in index order)")
            pk = _hex_key(rv.get("public_key"), f"{w}.public_key")
            p2p, api = rv.get("p2p_address"), rv.get("api_address")
            parse_address(p2p, f"{w}.p2p_address")
            split_api_address(api, f"{w}.api_address")
            vals.append(ValidatorInfo(pos, pk, p2p, api))
        if len({v.public_key for v in vals}) != len(vals):
            raise _fail(where, "validator public keys must be distinct")
        return cls(chain_id, gtime, tuple(vals))

    # Same shape as ledger/config.py:ClientRegistry.load: each file kind has its own parser and name.
    @classmethod
    def load(cls, path: Path) -> "Genesis":
        return cls.from_dict(_read_json(path, "genesis"), where=f"genesis {path}")


@dataclass(frozen=True)
class ClientInfo:
    """A registered API client: its Ed25519 public key, role and a display name."""

    public_key: bytes
    role: str
    name: str = ""

    @property
    def key_id(self) -> str:
        """The id a client sends in ``X-Ledger-Key``: the hex public key."""
        return self.public_key.hex()


@dataclass(frozen=True)
class ClientRegistry:
    """Client public key -> role. Validators' own keys are always accepted with the validator role."""

    clients: Mapping[str, ClientInfo] = field(default_factory=dict)

    def lookup(self, key_id: str) -> ClientInfo | None:
        return self.clients.get(key_id.lower())

    def with_validators(self, genesis: Genesis) -> "ClientRegistry":
        merged = dict(self.clients)
        for v in genesis.validators:
            merged.setdefault(v.public_key.hex(), ClientInfo(v.public_key, "validator", f"validator-{v.index}"))
        return ClientRegistry(merged)

    def to_dict(self) -> dict:
        return {"format": CLIENTS_FORMAT,
                "clients": [{"public_key": c.public_key.hex(), "role": c.role, "name": c.name}
                            for c in self.clients.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "clients") -> "ClientRegistry":
        if data.get("format", CLIENTS_FORMAT) != CLIENTS_FORMAT:
            raise _fail(where, f"unsupported format {data.get('format')!r} (expected {CLIENTS_FORMAT})")
        raw = data.get("clients")
        if not isinstance(raw, list):
            raise _fail(where, "clients must be a list")
        out: dict[str, ClientInfo] = {}
        for pos, rc in enumerate(raw):
            w = f"{where} clients[{pos}]"
            if not isinstance(rc, dict):
                raise _fail(w, "must be an object")
            pk = _hex_key(rc.get("public_key"), f"{w}.public_key")
            role = rc.get("role")
            if role not in ROLES:
                raise _fail(w, f"role must be one of {', '.join(ROLES)}, got {role!r}")
            name = rc.get("name", "")
            if not isinstance(name, str):
                raise _fail(w, "name must be a string")
            if pk.hex() in out:
                raise _fail(w, "duplicate public key")
            out[pk.hex()] = ClientInfo(pk, role, name)
        return cls(out)

    @classmethod
    def load(cls, path: Path) -> "ClientRegistry":
        return cls.from_dict(_read_json(path, "client registry"), where=f"client registry {path}")


@dataclass(frozen=True)
class NodeConfig:
    """One node's runtime settings. Paths are resolved relative to the config file's directory."""

    index: int
    genesis_file: Path
    clients_file: Path
    key_file: Path
    data_dir: Path
    p2p_listen: str = "127.0.0.1:0"
    api_listen: str = "127.0.0.1:0"
    # Consensus timeouts (seconds); each round's timeout grows by *_delta so a stalled round gets longer.
    timeout_propose: float = _CONSENSUS.timeout_propose
    timeout_propose_delta: float = _CONSENSUS.timeout_propose_delta
    timeout_prevote: float = _CONSENSUS.timeout_prevote
    timeout_prevote_delta: float = _CONSENSUS.timeout_prevote_delta
    timeout_precommit: float = _CONSENSUS.timeout_precommit
    timeout_precommit_delta: float = _CONSENSUS.timeout_precommit_delta
    timeout_max: float = _CONSENSUS.timeout_max
    # Block building: propose as soon as transactions wait, else an empty block every block_interval.
    block_interval: float = _CONSENSUS.timeout_commit
    max_block_txs: int = 2000
    max_block_bytes: int = 4 * 1024 * 1024
    max_tx_bytes: int = 72 * 1024  # the canonical encoding's own limit (ledger.types.codec.MAX_TX_BYTES)
    mempool_max_txs: int = 50000
    mempool_max_bytes: int = 64 * 1024 * 1024
    # HTTP API limits.
    api_max_body: int = 8 * 1024 * 1024
    api_clock_skew: float = 60.0
    api_max_batch: int = 5000
    # Optional HTTPS for the API: PEM certificate (chain) and private key; both or neither.
    api_tls_cert: str = ""
    api_tls_key: str = ""
    log_level: str = "INFO"

    _NUMERIC = {"timeout_propose", "timeout_propose_delta", "timeout_prevote", "timeout_prevote_delta",
                "timeout_precommit", "timeout_precommit_delta", "timeout_max", "block_interval",
                "api_clock_skew"}
    _INTS = {"max_block_txs", "max_block_bytes", "max_tx_bytes", "mempool_max_txs", "mempool_max_bytes",
             "api_max_body", "api_max_batch"}

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("genesis_file", "clients_file", "key_file", "data_dir"):
            d[k] = str(d[k])
        d["format"] = NODE_FORMAT
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path, where: str = "node config") -> "NodeConfig":
        if data.get("format", NODE_FORMAT) != NODE_FORMAT:
            raise _fail(where, f"unsupported format {data.get('format')!r} (expected {NODE_FORMAT})")
        known = {f.name for f in fields(cls)} | {"format"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _fail(where, f"unknown field {unknown[0]!r}")
        kw: dict[str, Any] = {}
        idx = data.get("index")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise _fail(where, "index must be a non-negative integer")
        kw["index"] = idx
        for k in ("genesis_file", "clients_file", "key_file", "data_dir"):
            v = data.get(k)
            if not isinstance(v, str) or not v:
                raise _fail(where, f"{k} must be a non-empty path string")
            p = Path(v)
            kw[k] = p if p.is_absolute() else (base / p)
        for k in ("p2p_listen", "api_listen"):
            if k in data:
                parse_address(data[k], f"{where} {k}")
                kw[k] = data[k]
        for k in cls._NUMERIC:
            if k in data:
                v = data[k]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 3600:
                    raise _fail(where, f"{k} must be a number of seconds in (0, 3600]")
                kw[k] = float(v)
        for k in cls._INTS:
            if k in data:
                v = data[k]
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 31:
                    raise _fail(where, f"{k} must be a positive integer")
                kw[k] = v
        if "log_level" in data:
            if data["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise _fail(where, "log_level must be DEBUG, INFO, WARNING or ERROR")
            kw["log_level"] = data["log_level"]
        for k in ("api_tls_cert", "api_tls_key"):
            if data.get(k):
                if not isinstance(data[k], str):
                    raise _fail(where, f"{k} must be a path string")
                p = Path(data[k])
                kw[k] = str(p if p.is_absolute() else base / p)
        if bool(kw.get("api_tls_cert")) != bool(kw.get("api_tls_key")):
            raise _fail(where, "api_tls_cert and api_tls_key must be given together")
        cfg = cls(**kw)
        if cfg.max_tx_bytes > cfg.max_block_bytes:
            raise _fail(where, "max_tx_bytes must not exceed max_block_bytes")
        return cfg

    @classmethod
    def load(cls, path: Path) -> "NodeConfig":
        path = Path(path)
        return cls.from_dict(_read_json(path, "node config"), base=path.resolve().parent,
                             where=f"node config {path}")


@dataclass(frozen=True)
class KeyFile:
    """A private Ed25519 seed with its role (validator index or client role). Stored 0600."""

    seed: bytes
    role: str
    index: int | None = None
    name: str = ""

    def to_dict(self) -> dict:
        d = {"format": KEY_FORMAT, "role": self.role, "private_key": self.seed.hex(), "name": self.name}
        if self.index is not None:
            d["index"] = self.index
        return d

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (never world- or group-readable, even briefly)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, check_mode: bool = True) -> "KeyFile":
        path = Path(path)
        where = f"key file {path}"
        if check_mode:
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                raise ConfigError(f"key file not found: {path}") from None
            if mode & 0o077:
                raise _fail(where, f"permissions {oct(mode)} are too open (chmod 600)")
        data = _read_json(path, "key")
        if data.get("format", KEY_FORMAT) != KEY_FORMAT:
            raise _fail(where, f"unsupported format {data.get('format')!r}")
        seed = _hex_key(data.get("private_key"), f"{where} private_key")
        role = data.get("role")
        if role not in ROLES:
            raise _fail(where, f"role must be one of {', '.join(ROLES)}")
        index = data.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise _fail(where, "index must be a non-negative integer")
        return cls(seed, role, index, str(data.get("name", "")))


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON document atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


__all__ = ["ROLES", "ConfigError", "ValidatorInfo", "Genesis", "ClientInfo", "ClientRegistry", "NodeConfig",
           "KeyFile", "parse_address", "split_api_address", "canonical_json", "write_json", "asdict"]
