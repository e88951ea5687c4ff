"""Peel's certificate authority on disk: a root and an intermediate per generation, the trust
bundle, root rotation with an overlap, and local issuance. No API ever serves what is in here.

    <ca_dir>/                   0700
      ca.json                   trust domain, current and previous generation, overlap end
      bundle.pem                the trust bundle: the current root, and the previous one while a
                                rotation overlaps
      generations/<n>/          0700, one per root: root.pem, root.key (0600; absent when the root
                                is kept offline), intermediate.pem, intermediate.key (0600)
      offline/root-<n>.key      with --offline-root: the root key, for the operator to move away

`ca.json` is the commit point: a generation's files are all written before `ca.json` names it, so a
crash leaves either the old CA or the new one (and at worst an unused generation directory, never
reused). `bundle.pem` follows from `ca.json` and is rewritten when it does not match.

The intermediate signs leaves; the root key is only needed to sign an intermediate, which happens
when a generation is made, so `--offline-root` costs nothing day to day. Rotation makes a new
generation (root and intermediate); for the overlap both roots are in the bundle, so leaves of
either verify everywhere the new bundle reached; `finish_rotation` drops the old root from the
bundle and deletes the old generation's keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.identity import certs
from gateway.identity.errors import CaError
from gateway.identity.files import KEY_MODE, PUBLIC_MODE, private_dir, read_private, write_atomic
from gateway.identity.spiffe import check_trust_domain, service_id

STATE_FILE = "ca.json"
BUNDLE_FILE = "bundle.pem"
DEFAULT_OVERLAP = timedelta(hours=48)


@dataclass(frozen=True, slots=True)
class CaState:
    """What `ca.json` holds."""

    trust_domain: str
    current: int
    previous: int | None = None
    overlap_until: datetime | None = None
    offline_root: bool = False
    name_constraints: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"trust_domain": self.trust_domain, "current": self.current, "previous": self.previous,
                "overlap_until": self.overlap_until.isoformat() if self.overlap_until else None,
                "offline_root": self.offline_root, "name_constraints": self.name_constraints}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> CaState:
        try:
            until = data["overlap_until"]
            return cls(trust_domain=check_trust_domain(data["trust_domain"]), current=int(data["current"]),
                       previous=None if data["previous"] is None else int(data["previous"]),
                       overlap_until=None if until is None else datetime.fromisoformat(until),
                       offline_root=bool(data["offline_root"]),
                       name_constraints=bool(data["name_constraints"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CaError(f"{where} is not a Peel CA state file: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Generation:
    """One root and its intermediate, as files in `directory`."""

    number: int
    directory: Path
    root: x509.Certificate
    intermediate: x509.Certificate

    @property
    def root_key_path(self) -> Path:
        return self.directory / "root.key"

    @property
    def intermediate_key_path(self) -> Path:
        return self.directory / "intermediate.key"

    @property
    def intermediate_path(self) -> Path:
        return self.directory / "intermediate.pem"

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"


class CertificateAuthority:
    """The CA in one directory. `init` makes one; `open` loads it."""

    def __init__(self, directory: Path, state: CaState) -> None:
        self.directory = directory
        self.state = state
        self.current = self._generation(state.current)
        self.previous = None if state.previous is None else self._generation(state.previous)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CaError(f"no CA in {directory}: run `peel ca init` first") from None
        except (OSError, ValueError) as exc:
            raise CaError(f"{path} cannot be read: {exc}") from None
        ca = cls(directory, CaState.from_json(data, path))
        if ca._read_bundle() != ca.bundle_pem():
            ca._write_bundle()  # a crash between ca.json and bundle.pem: finish the job
        return ca

    def _generation(self, number: int) -> Generation:
        directory = self.directory / "generations" / str(number)
        try:
            root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
            intermediate = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise CaError(f"generation {number} of the CA in {self.directory} is unreadable: {exc}") from None
        return Generation(number, directory, root, intermediate)

    @property
    def trust_domain(self) -> str:
        return self.state.trust_domain

    @property
    def bundle_path(self) -> Path:
        return self.directory / BUNDLE_FILE

    def bundle_pem(self) -> bytes:
        """The trust roots: the current root first, then the previous one during an overlap."""
        roots = [self.current.root] + ([self.previous.root] if self.previous else [])
        return certs.cert_pem(*roots)

    def _read_bundle(self) -> bytes | None:
        try:
            return self.bundle_path.read_bytes()
        except FileNotFoundError:
            return None

    def _write_bundle(self) -> None:
        write_atomic(self.bundle_path, self.bundle_pem(), PUBLIC_MODE)

    def _commit(self, state: CaState) -> CertificateAuthority:
        write_atomic(self.directory / STATE_FILE, (json.dumps(state.to_json(), indent=2) + "\n").encode(),
                     PUBLIC_MODE)
        ca = CertificateAuthority(self.directory, state)
        ca._write_bundle()
        return ca

    # -- making generations ----------------------------------------------------------------------

    @staticmethod
    def _make_generation(directory: Path, state: CaState, number: int, *, now: datetime,
                         root_lifetime: timedelta, intermediate_lifetime: timedelta) -> Path | None:
        """Write generation `number`; the path of the root key when it is kept offline."""
        gen_dir = private_dir(directory / "generations" / str(number))
        root_key, inter_key = certs.new_key(), certs.new_key()
        root = certs.build_root(root_key, state.trust_domain, now=now, lifetime=root_lifetime,
                                name_constraints=state.name_constraints)
        inter = certs.build_intermediate(inter_key.public_key(), state.trust_domain, root, root_key,
                                         now=now, lifetime=intermediate_lifetime,
                                         name_constraints=state.name_constraints)
        write_atomic(gen_dir / "intermediate.key", certs.key_pem(inter_key), KEY_MODE)
        offline = None
        if state.offline_root:
            offline = private_dir(directory / "offline") / f"root-{number}.key"
            if offline.exists():
                raise CaError(f"{offline} already exists; move it away first")
            write_atomic(offline, certs.key_pem(root_key), KEY_MODE)
        else:
            write_atomic(gen_dir / "root.key", certs.key_pem(root_key), KEY_MODE)
        write_atomic(gen_dir / "intermediate.pem", certs.cert_pem(inter), PUBLIC_MODE)
        write_atomic(gen_dir / "root.pem", certs.cert_pem(root), PUBLIC_MODE)
        return offline

    @staticmethod
    def _next_number(directory: Path) -> int:
        # Never reuse a number: a directory left by a crash before ca.json named it stays unused.
        existing = [int(p.name) for p in (directory / "generations").glob("*") if p.name.isdigit()]
        return max(existing, default=0) + 1

    @classmethod
    def init(cls, directory: Path, trust_domain: str, *, now: datetime, offline_root: bool = False,
             name_constraints: bool = True, root_lifetime: timedelta = certs.ROOT_LIFETIME,
             intermediate_lifetime: timedelta = certs.INTERMEDIATE_LIFETIME,
             ) -> tuple[CertificateAuthority, Path | None]:
        """A new CA in `directory`: generation 1. Returns it and the offline root key's path."""
        check_trust_domain(trust_domain)
        if (directory / STATE_FILE).exists():
            raise CaError(f"a CA already exists in {directory}; `peel ca rotate` makes a new root")
        private_dir(directory)
        number = cls._next_number(directory)
        state = CaState(trust_domain, number, offline_root=offline_root, name_constraints=name_constraints)
        offline = cls._make_generation(directory, state, number, now=now, root_lifetime=root_lifetime,
                                       intermediate_lifetime=intermediate_lifetime)
        return cls(directory, state)._commit(state), offline

    def rotate(self, *, now: datetime, overlap: timedelta = DEFAULT_OVERLAP,
               root_lifetime: timedelta = certs.ROOT_LIFETIME,
               intermediate_lifetime: timedelta = certs.INTERMEDIATE_LIFETIME,
               ) -> tuple[CertificateAuthority, Path | None]:
        """Start a root rotation: a new generation signs from now on; both roots are trusted until
        `finish_rotation`, allowed from `now + overlap`."""
        if self.previous is not None:
            raise CaError(f"a rotation is already in progress (generation {self.previous.number} is "
                          f"still trusted); finish it first: peel ca rotate --finish")
        number = self._next_number(self.directory)
        state = replace(self.state, current=number, previous=self.state.current,
                        overlap_until=now + overlap)
        offline = self._make_generation(self.directory, state, number, now=now, root_lifetime=root_lifetime,
                                        intermediate_lifetime=intermediate_lifetime)
        return self._commit(state), offline

    def finish_rotation(self, *, now: datetime, force: bool = False) -> CertificateAuthority:
        """Drop the previous root from the bundle and delete its generation's keys."""
        old = self.previous
        if old is None:
            raise CaError("no rotation is in progress")
        until = self.state.overlap_until
        if until is not None and now < until and not force:
            raise CaError(f"the overlap lasts until {until:%Y-%m-%d %H:%M:%S} UTC: leaves of the old root "
                          "may still be in use; wait, or finish now with --force")
        ca = self._commit(replace(self.state, previous=None, overlap_until=None))
        for key in (old.intermediate_key_path, old.root_key_path):
            key.unlink(missing_ok=True)
        return ca

    # -- issuing ---------------------------------------------------------------------------------

    def issue(self, csr: x509.CertificateSigningRequest, service: str, *, now: datetime,
              lifetime: timedelta = certs.LEAF_LIFETIME) -> x509.Certificate:
        """A leaf for `spiffe://<trust-domain>/svc/<service>` from `csr`, signed by the current
        intermediate (the CSR must ask for exactly that ID)."""
        identity = service_id(self.trust_domain, service)
        key = certs.load_key(read_private(self.current.intermediate_key_path),
                             str(self.current.intermediate_key_path))
        return certs.build_leaf(csr, identity, self.current.intermediate, key, now=now, lifetime=lifetime)
