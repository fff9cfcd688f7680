"""The content-addressed blob store and the model store on top of it.

Layout under the blobs dir (``<data dir>/blobs``)::

    sha256/<hex>     a complete, verified blob (files and encoded manifests)
    partial/<hex>    a blob being fetched (resumable; never served, never loaded)
    tmp/             temporary files of atomic writes
    models/<hex>     an empty marker: the blob <hex> is a manifest of a hosted model
    views/<hex>/     a hosted model's blobs hard-linked under their manifest paths

Writes are atomic: a temporary file in the same filesystem, fsync, rename, fsync of the
directory, so a crash leaves either the whole blob or none. The hash is checked before a
blob enters ``sha256/`` and again whenever a model is loaded (the runners hash what they
read); a blob that fails its check is removed so it is fetched again, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aipg.wire import WireError, decode, encode

from .errors import ModelError
from .manifest import (
    Manifest,
    ModelDir,
    ModelFile,
    ModelId,
    check_manifest,
    load_model_dir,
)

__all__ = ["BlobStore", "ModelStore", "fsync_dir"]

COPY_CHUNK = 1 << 20


class BlobStore:
    """Blobs by sha256 under ``root``. Digests are 32 raw bytes; paths are derived, never
    taken from input, so no request can name a file outside the store."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        for sub in ("sha256", "partial", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, digest: bytes) -> Path:
        """Where the complete blob ``digest`` is (or would be)."""
        return self.root / "sha256" / _hex(digest)

    def partial_path(self, digest: bytes) -> Path:
        """Where a fetch of ``digest`` keeps what it has so far."""
        return self.root / "partial" / _hex(digest)

    def has(self, digest: bytes) -> bool:
        """Whether the complete blob is stored (not whether it is intact: see verify)."""
        return self.path(digest).is_file()

    def size(self, digest: bytes) -> int | None:
        """The size of a stored blob, None when absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: bytes, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``offset .. offset+length`` of a stored blob. Raises FileNotFoundError."""
        with self.path(digest).open("rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def put_bytes(self, data: bytes, expected: bytes | None = None) -> bytes:
        """Store ``data`` atomically; returns its digest. Raises ModelError when it does not
        hash to ``expected``."""
        digest = hashlib.sha256(data).digest()
        _require_digest(digest, expected, "data")
        if not self.has(digest):
            with self._atomic(digest) as f:
                f.write(data)
        return digest

    def put_file(self, source: Path, expected: bytes | None = None) -> bytes:
        """Copy ``source`` in atomically, hashing as it is copied; returns its digest. Raises
        ModelError when it does not hash to ``expected`` (nothing is stored then)."""
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(COPY_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.digest()
            _require_digest(digest, expected, str(source))
            os.replace(tmp, self.path(digest))
            fsync_dir(self.path(digest).parent)
            return digest
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def commit_partial(self, digest: bytes) -> None:
        """Move a completely fetched ``partial/<hex>`` into the store after checking its
        hash. Raises ModelError (and deletes the partial file) when it does not match."""
        partial = self.partial_path(digest)
        with partial.open("rb") as f:
            f.flush()
            os.fsync(f.fileno())
            actual = _hash_stream(f)
        if actual != digest:
            partial.unlink()
            raise ModelError(f"fetched blob {_hex(digest)} has the wrong sha256; discarded")
        os.replace(partial, self.path(digest))
        fsync_dir(self.path(digest).parent)

    def verify(self, digest: bytes) -> bool:
        """Rehash a stored blob. A corrupt one is removed (to be fetched again): False."""
        try:
            with self.path(digest).open("rb") as f:
                good = _hash_stream(f) == digest
        except FileNotFoundError:
            return False
        if not good:
            self.remove(digest)
        return good

    def remove(self, digest: bytes) -> None:
        """Delete a stored blob (no error when absent)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    @contextlib.contextmanager
    def _atomic(self, digest: bytes) -> Iterator:
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(digest))
            fsync_dir(self.path(digest).parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class ModelStore:
    """Hosted models: manifests and files as blobs, and the list of models hosted."""

    def __init__(self, blobs_dir: Path | str) -> None:
        self.blobs = BlobStore(blobs_dir)
        self._index = self.blobs.root / "models"
        self._index.mkdir(exist_ok=True)

    def add_manifest(self, manifest: Manifest) -> ModelId:
        """Record ``manifest`` (its files may still be missing); returns its model id."""
        check_manifest(manifest)
        mid = ModelId(self.blobs.put_bytes(encode(manifest)))
        marker = self._index / _hex(mid)
        if not marker.exists():
            marker.touch()
            fsync_dir(self._index)
        return mid

    def add_model_dir(self, root: Path | str) -> ModelId:
        """Import a model directory: every file is hash-checked on the way in. Raises
        ModelError naming a file that does not match the manifest."""
        model = load_model_dir(root)
        for entry in model.manifest.files:
            if not self.blobs.has(entry.sha256):
                try:
                    self.blobs.put_file(model.paths[entry.role], entry.sha256)
                except FileNotFoundError:
                    raise ModelError(f"{entry.path} ({entry.role}) is missing") from None
        return self.add_manifest(model.manifest)

    def manifest(self, mid: bytes) -> Manifest:
        """The manifest of a hosted model. Raises ModelError when unknown or corrupt."""
        try:
            data = self.blobs.read(mid)
        except FileNotFoundError:
            raise ModelError(f"model {_hex(mid)} is not in the store") from None
        if hashlib.sha256(data).digest() != mid:
            self.blobs.remove(mid)
            raise ModelError(f"stored manifest {_hex(mid)} is corrupt; removed, fetch it again")
        try:
            return decode(data, Manifest)
        except WireError as e:
            raise ModelError(f"stored manifest {_hex(mid)} does not decode: {e}") from None

    def model_ids(self) -> list[ModelId]:
        """Every model recorded in this store, in id order."""
        ids = []
        for marker in sorted(self._index.iterdir()):
            with contextlib.suppress(ValueError):
                if len(raw := bytes.fromhex(marker.name)) == 32:
                    ids.append(ModelId(raw))
        return ids

    def missing_files(self, mid: bytes) -> list[ModelFile]:
        """The files of a model not (yet) in the store."""
        return [f for f in self.manifest(mid).files if not self.blobs.has(f.sha256)]

    def open_model(self, mid: bytes) -> ModelDir:
        """The model as a :class:`ModelDir` over blob paths (runners verify as they read).
        Raises ModelError when files are missing."""
        manifest = self.manifest(mid)
        if missing := [f.path for f in manifest.files if not self.blobs.has(f.sha256)]:
            raise ModelError(f"model {manifest.name!r} is missing file(s): {', '.join(missing)}")
        view = self._view(mid, manifest)
        return ModelDir(manifest, {f.role: view / f.path for f in manifest.files})

    def _view(self, mid: bytes, manifest: Manifest) -> Path:
        """``views/<id>/``: the model's blobs hard-linked under their manifest paths, so the
        model reads as the directory it was published from (ONNX external data is found
        next to its graph). Links are renewed when a blob was replaced since."""
        root = self.blobs.root / "views" / _hex(mid)
        for entry in manifest.files:  # paths were checked to stay inside the directory
            target, blob = root / entry.path, self.blobs.path(entry.sha256)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(target, blob):
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(target.name + ".link")
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            try:
                os.link(blob, staging)
            except OSError:  # a filesystem without hard links: copy (blobs are immutable)
                shutil.copyfile(blob, staging)
            os.replace(staging, target)
        return root

    def verify_model(self, mid: bytes) -> list[ModelFile]:
        """Rehash every file; corrupt ones are removed. Returns the files to fetch again."""
        return [f for f in self.manifest(mid).files if not self.blobs.verify(f.sha256)]


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _hash_stream(f) -> bytes:
    h = hashlib.sha256()
    while chunk := f.read(COPY_CHUNK):
        h.update(chunk)
    return h.digest()


def _hex(digest: bytes) -> str:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise ModelError("a blob id is a 32-byte sha256 digest")
    return digest.hex()


def _require_digest(actual: bytes, expected: bytes | None, what: str) -> None:
    if expected is not None and actual != expected:
        raise ModelError(f"{what}: sha256 {actual.hex()} does not match {_hex(expected)}")
