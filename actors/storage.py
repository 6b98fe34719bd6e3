"""Files at a location no node owns: a local path or a URI, through `pyarrow.fs`.

A location is a local path (`/runs/a`, `runs/a`) or a URI that `pyarrow.fs.FileSystem.from_uri`
reads: `s3://bucket/prefix`, `gs://bucket/prefix`, `file:///abs/path`. S3 credentials come
from the standard environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, ~/.aws). An S3-compatible endpoint (MinIO, moto) comes from
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (`http://host:port`; pyarrow 26 honours them in
`from_uri`, not in a bare `S3FileSystem()`), or from the URI's query:
`s3://bucket/prefix?endpoint_override=host:port&scheme=http` (a query stays on every location
joined under it). On AWS itself add `?region=...`: without it (and without an endpoint) each
call looks the bucket's region up (`AWS_REGION` does not stop that). Files are streamed in
CHUNK-sized pieces and hashed (sha256) on the way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

CHUNK = 1 << 20


class ChecksumError(OSError):
    """A file's bytes do not match the sha256 it was expected to have."""


def is_uri(loc: str | Path) -> bool:
    return "://" in str(loc)


def resolve(loc: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and its path for `loc` (a plain path: the local one, made absolute)."""
    if is_uri(loc):
        return pafs.FileSystem.from_uri(str(loc))
    return pafs.LocalFileSystem(), str(Path(loc).resolve())


def local_path(loc: str | Path) -> Path | None:
    """`loc` as a local path (a plain path or a file:// URI), else None."""
    if not is_uri(loc):
        return Path(loc)
    return Path(resolve(loc)[1]) if urlsplit(str(loc)).scheme == "file" else None


def join(loc: str | Path, *parts: str) -> str | Path:
    """`loc` with `parts` appended to its path (a URI keeps its query); a Path stays a Path."""
    if not is_uri(loc):
        return Path(loc).joinpath(*parts)
    u = urlsplit(str(loc))
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def name(loc: str | Path) -> str:
    """The last component of `loc`'s path."""
    return PurePosixPath(urlsplit(str(loc)).path).name if is_uri(loc) else Path(loc).name


def _copy(src, dst, h) -> None:
    while chunk := src.read(CHUNK):
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)


def _open_output(fs: pafs.FileSystem, path: str):
    if isinstance(fs, pafs.LocalFileSystem):  # object stores have no directories to make
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    return fs.open_output_stream(path)


def list_files(loc: str | Path) -> list[str]:
    """The files under `loc`, recursively, as sorted '/'-separated relative paths ([] if none)."""
    fs, base = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base.rstrip("/")) + 1:] for i in infos
                  if i.type == pafs.FileType.File)


def children(loc: str | Path) -> list[str]:
    """The names directly under `loc` (files and directories; [] if there is none)."""
    fs, base = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def exists(loc: str | Path) -> bool:
    fs, path = resolve(loc)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(loc: str | Path) -> bytes | None:
    """The bytes of the file at `loc`, or None if there is none."""
    fs, path = resolve(loc)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes(loc: str | Path, data: bytes) -> str:
    """Write `data` to the file at `loc` (replaced whole); returns its sha256."""
    fs, path = resolve(loc)
    with _open_output(fs, path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def delete(loc: str | Path) -> None:
    """Delete the file or the directory (prefix) at `loc`, with its contents; none is fine."""
    fs, path = resolve(loc)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
    elif kind == pafs.FileType.Directory:
        fs.delete_dir(path)


def digests(loc: str | Path) -> dict[str, str]:
    """{relative path: sha256} of the files under `loc` (read back from storage)."""
    fs, base = resolve(loc)
    out = {}
    for name in list_files(loc):
        h = hashlib.sha256()
        with fs.open_input_stream(f"{base}/{name}") as f:
            _copy(f, None, h)
        out[name] = h.hexdigest()
    return out


def upload(src: Path, dest: str | Path) -> dict[str, str]:
    """Copy the files under the local dir `src` to `dest`; returns {relative path: sha256}."""
    fs, base = resolve(dest)
    out = {}
    for p in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        name, h = p.relative_to(src).as_posix(), hashlib.sha256()
        with p.open("rb") as f, _open_output(fs, f"{base}/{name}") as g:
            _copy(f, g, h)
        out[name] = h.hexdigest()
    return out


def download(src: str | Path, dest: Path, expected: dict[str, str] | None = None
             ) -> dict[str, str]:
    """Copy the files under `src` (those of `expected`, if given) into the local dir `dest`;
    returns {relative path: sha256}. Raises ChecksumError naming a file that does not match
    `expected`, FileNotFoundError for one missing."""
    fs, base = resolve(src)
    out = {}
    for name in list_files(src) if expected is None else sorted(expected):
        target, h = Path(dest) / name, hashlib.sha256()
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{base}/{name}") as f, target.open("wb") as g:
            _copy(f, g, h)
        out[name] = h.hexdigest()
        if expected is not None and out[name] != expected[name]:
            raise ChecksumError(f"{join(src, name)}: sha256 {out[name]} does not match the "
                                f"expected {expected[name]}")
    return out
