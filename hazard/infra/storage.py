"""The one storage layer: local paths, ``file://`` and ``s3://`` URIs, on pyarrow filesystems.

Used by the data job (sources, Parquet outputs, lineage) and by `hazard.infra.bundle` (model
bundles:
upload, download into the local cache under `cache_root()`, sha256 manifests). Everything goes
through `filesystem_for`, which builds a `pyarrow.fs.LocalFileSystem` or
`pyarrow.fs.S3FileSystem`; pass that filesystem to pyarrow and Ray Data too (`ray_io`), so all
of them reach the same endpoint.

S3 settings come from the standard AWS environment variables, read here and passed explicitly
because pyarrow's `S3FileSystem()` ignores `AWS_ENDPOINT_URL`: `AWS_ENDPOINT_URL_S3` (wins) or
`AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_CA_BUNDLE`. A `StorageConfig` may override
them; it never holds secrets, only the names of the variables to read them from. Without key
variables the AWS SDK's own chain is used (web identity / IRSA, instance profile). Note that a
filesystem built with explicit keys carries them when pickled (e.g. into Ray tasks).

Local writes are atomic (temp file in the same directory, then `os.replace`); an S3 object
appears only once its upload completes, and a failed upload is deleted.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hazard.config.storage import StorageConfig

SUPPORTED_SCHEMES = ("file", "s3")  # plus plain local paths
_CHUNK = 8 * 1024 * 1024
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(OSError):
    """A storage operation failed; the message names the URI."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The file or prefix does not exist."""


class InvalidURIError(StorageError, ValueError):
    """The URI or relative path cannot be used (unsupported scheme, NUL byte, '..', ...)."""


class ChecksumMismatchError(StorageError):
    """A file's sha256 differs from the one in the manifest."""


class FileEntry(NamedTuple):
    """A file found by `list_files`."""

    relpath: str  # '/'-separated, relative to the listed prefix
    uri: str
    size: int


class RayIO(NamedTuple):
    """What Ray Data and Ray Train need: `ray.data.read_parquet(io.path, filesystem=io.filesystem)`,
    `ds.write_parquet(io.path, filesystem=io.filesystem)`,
    `RunConfig(storage_path=io.path, storage_filesystem=io.filesystem)`."""

    path: str
    filesystem: pafs.FileSystem


# --- URIs -------------------------------------------------------------------------------------


def parse_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``(scheme, path)``: ("file", absolute local path) or ("s3", "bucket/key"); no I/O."""
    uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise InvalidURIError(f"{uri!r}: expected a str path or URI")
    if "\x00" in uri:
        raise InvalidURIError(f"{uri!r}: contains a NUL byte")
    match = _SCHEME.match(uri)
    if not match:
        if not uri:
            raise InvalidURIError("empty path")
        return "file", os.path.abspath(os.path.expanduser(uri))
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidURIError(
            f"{uri}: unsupported scheme {scheme!r}; supported: local paths, "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        )
    rest = uri[match.end() :]
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise InvalidURIError(f"{uri}: expected file:///absolute/path")
        return "file", os.path.abspath("/" + unquote(path))
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidURIError(f"{uri}: expected s3://bucket/key")
    return "s3", f"{bucket}/{key}".rstrip("/")


def absolute(uri: str | os.PathLike) -> str:
    """`uri` with a local path made absolute (from the current directory); URIs unchanged.

    Jobs resolve their paths on the driver with this: Ray Train workers run in a directory of
    their own, where a relative path would point elsewhere.
    """
    uri = os.fspath(uri)
    return uri if _SCHEME.match(uri) else os.path.abspath(os.path.expanduser(uri))


def join_uri(base: str | os.PathLike, *parts: str) -> str:
    """`base` + '/'-joined relative parts, keeping the scheme; '..', '.', empty segments and
    absolute parts are refused. ``join_uri("s3://b/run", "model/x.json") -> "s3://b/run/model/x.json"``.
    """
    base = os.fspath(base)
    scheme, _ = parse_uri(base)  # validates the base
    rel = _relpath("/".join(parts), base)
    if scheme == "file" and _SCHEME.match(base):
        rel = quote(rel)
    return (base if base.endswith("/") else base + "/") + rel


def _relpath(rel: str, where: str) -> str:
    """A safe relative '/'-path (no '..', '.', empty segments, absolute or NUL)."""
    parts = rel.split("/")
    if "\x00" in rel or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise InvalidURIError(f"{where}: unsafe relative path {rel!r}")
    return rel


# --- filesystems ------------------------------------------------------------------------------


def filesystem_for(
    uri: str | os.PathLike, config: StorageConfig | None = None
) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` and the path it takes (local: absolute; S3: bucket/key)."""
    scheme, path = parse_uri(uri)
    if scheme == "file":
        return _local_fs(), path
    return _s3_fs(tuple(sorted(_s3_options(config).items()))), path


def ray_io(uri: str | os.PathLike, config: StorageConfig | None = None) -> RayIO:
    """Path and filesystem to pass to Ray Data readers/writers and Ray Train (see `RayIO`)."""
    fs, path = filesystem_for(uri, config)
    return RayIO(path, fs)


def _s3_options(config: StorageConfig | None) -> dict:
    """Keyword arguments of `S3FileSystem` from `config`, then the AWS env vars."""
    cfg, env = config or StorageConfig(), os.environ
    opts: dict = {}
    endpoint = cfg.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or "@" in url.netloc:
            raise StorageError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
        if url.path.strip("/"):
            raise StorageError(f"S3 endpoint {endpoint!r}: a path after host:port is unsupported")
        if url.scheme == "http" and not cfg.allow_http:
            raise StorageError(f"S3 endpoint {endpoint!r} is http:// and allow_http is false")
        opts["endpoint_override"], opts["scheme"] = url.netloc, url.scheme
    region = cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    ca_bundle = cfg.ca_bundle or env.get("AWS_CA_BUNDLE")
    if ca_bundle:
        opts["tls_ca_file_path"] = ca_bundle
    if cfg.anonymous:
        opts["anonymous"] = True
        return opts
    key, secret = env.get(cfg.access_key_id_env), env.get(cfg.secret_access_key_env)
    if bool(key) != bool(secret):
        raise StorageError(
            f"S3 credentials: set both ${cfg.access_key_id_env} and "
            f"${cfg.secret_access_key_env}, or neither"
        )
    if key:
        opts["access_key"], opts["secret_key"] = key, secret
        if env.get(cfg.session_token_env):
            opts["session_token"] = env[cfg.session_token_env]
    return opts


@functools.cache
def _local_fs() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


@functools.lru_cache(maxsize=8)
def _s3_fs(options: tuple[tuple[str, object], ...]) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(**dict(options))


@contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Re-raise pyarrow/OS errors as StorageError naming `uri`."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"{uri}: not found ({exc})") from exc
    except OSError as exc:
        raise StorageError(f"{uri}: {exc}") from exc


def _require(fs: pafs.FileSystem, path: str, uri: str, kind: pafs.FileType) -> pafs.FileInfo:
    with _errors(uri):
        info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageNotFoundError(f"{uri}: not found")
    if info.type != kind:
        what = "a directory" if info.type == pafs.FileType.Directory else "a file"
        raise StorageError(f"{uri}: is {what}")
    return info


# --- reading ----------------------------------------------------------------------------------


def exists(uri: str | os.PathLike, config: StorageConfig | None = None) -> bool:
    """Whether `uri` is an existing file, directory or (non-empty) S3 prefix."""
    fs, path = filesystem_for(uri, config)
    with _errors(os.fspath(uri)):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def open_input(
    uri: str | os.PathLike,
    config: StorageConfig | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> pa.NativeFile:
    """A readable, seekable binary file (context manager); StorageNotFoundError if missing.

    `filesystem`, when given, is one `filesystem_for` built for the same scheme elsewhere (e.g.
    on the driver, so Ray workers need not see the AWS variables).
    """
    if filesystem is None:
        fs, path = filesystem_for(uri, config)
    else:
        fs, path = filesystem, parse_uri(uri)[1]
    with _errors(os.fspath(uri)):
        return fs.open_input_file(path)


def read_bytes(uri: str | os.PathLike, config: StorageConfig | None = None) -> bytes:
    """The whole file (on S3: one GET)."""
    fs, path = filesystem_for(uri, config)
    with _errors(os.fspath(uri)), fs.open_input_stream(path) as fh:
        return fh.read()


def list_files(uri: str | os.PathLike, config: StorageConfig | None = None) -> list[FileEntry]:
    """Every file under the prefix `uri`, recursively, sorted by relative path."""
    fs, root = filesystem_for(uri, config)
    uri = os.fspath(uri)
    _require(fs, root, uri, pafs.FileType.Directory)
    with _errors(uri):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = root.rstrip("/") + "/"
    entries = []
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = info.path[len(prefix) :]
            entries.append(FileEntry(rel, join_uri(uri, rel), info.size))
    return sorted(entries)


def read_parquet(
    uri: str | os.PathLike, config: StorageConfig | None = None, columns: list[str] | None = None
) -> pa.Table:
    """A Parquet file, or a directory of Parquet files, as one table."""
    fs, path = filesystem_for(uri, config)
    uri = os.fspath(uri)
    if not exists(uri, config):
        raise StorageNotFoundError(f"{uri}: not found")
    with _errors(uri):
        return pq.read_table(path, filesystem=fs, columns=columns)


# --- writing ----------------------------------------------------------------------------------


def delete_dir(uri: str | os.PathLike, config: StorageConfig | None = None) -> None:
    """Remove the folder or prefix `uri` and everything under it; nothing if it is absent."""
    fs, path = filesystem_for(uri, config)
    uri = os.fspath(uri)
    with _errors(uri):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        fs.delete_dir_contents(path, missing_dir_ok=True)
        with suppress(FileNotFoundError, OSError):
            fs.delete_dir(path)


@contextmanager
def open_output(
    uri: str | os.PathLike,
    config: StorageConfig | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> Iterator[IO]:
    """A binary stream whose content replaces `uri` only if the block succeeds.

    Local: a temp file in the target directory (parents created), fsynced, then `os.replace`.
    S3: a (multipart) upload, deleted again if the block raises (pyarrow may then leave an
    empty "directory" marker for the parent prefix). `filesystem`: as for `open_input`.
    """
    if filesystem is None:
        fs, path = filesystem_for(uri, config)
    else:
        fs, path = filesystem, parse_uri(uri)[1]
    uri = os.fspath(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        with _errors(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(
                os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}"
            )
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            with _errors(uri):
                os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        return
    with _errors(uri):
        stream = fs.open_output_stream(path)
    try:
        yield stream
    except BaseException:
        with suppress(Exception):
            stream.close()
        with suppress(Exception):
            fs.delete_file(path)
        raise
    with _errors(uri):
        stream.close()


def delete_file(uri: str | os.PathLike, config: StorageConfig | None = None) -> None:
    """Remove one file or object; nothing if it is absent."""
    fs, path = filesystem_for(uri, config)
    with _errors(os.fspath(uri)), suppress(FileNotFoundError):
        fs.delete_file(path)


def write_bytes(uri: str | os.PathLike, data: bytes, config: StorageConfig | None = None) -> None:
    """Write (replace) the file atomically, see `open_output`."""
    with open_output(uri, config) as fh:
        fh.write(data)


def write_parquet(
    uri: str | os.PathLike, table: pa.Table, config: StorageConfig | None = None, **options
) -> None:
    """Write one Parquet file atomically (built in memory; use Ray Data for large datasets).
    `options` go to `pyarrow.parquet.write_table` (e.g. compression)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    write_bytes(uri, sink.getvalue().to_pybytes(), config)


# --- directories and the local cache ----------------------------------------------------------


def cache_root() -> Path:
    """The project's local cache folder: $HAZARD_CACHE, else ~/.cache/hazard-cascade."""
    return Path(os.environ.get("HAZARD_CACHE") or Path.home() / ".cache" / "hazard-cascade")


def _copy(src: IO, dst: IO) -> str:
    """Copy a stream in chunks; the sha256 hex digest of what was copied."""
    digest = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a local file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def upload_dir(
    local_dir: str | os.PathLike,
    uri: str | os.PathLike,
    config: StorageConfig | None = None,
    exclude: Collection[str] = (),
) -> dict[str, str]:
    """Copy every file under `local_dir` (but the relative paths in `exclude`) to
    `uri`/<relative path>, one at a time; returns the manifest {relative_path: sha256} of what
    was uploaded (give it to `download_dir`)."""
    manifest = {}
    for entry in list_files(local_dir):
        if entry.relpath in exclude:
            continue
        with open_input(entry.uri) as src, open_output(join_uri(uri, entry.relpath), config) as dst:
            manifest[entry.relpath] = _copy(src, dst)
    return manifest


def download_dir(
    uri: str | os.PathLike,
    cache_dir: str | os.PathLike,
    manifest: Mapping[str, str] | None = None,
    config: StorageConfig | None = None,
) -> Path:
    """Download the prefix `uri` into `cache_dir` (same relative paths); returns `cache_dir`.

    With a manifest {relative_path: sha256} exactly its files are fetched: a cached copy is
    reused only if its sha256 matches, and a downloaded file that does not match raises
    ChecksumMismatchError naming it (nothing is written for it). Without a manifest every file
    under the prefix is fetched again, since nothing can be checked.
    """
    uri, cache = os.fspath(uri), Path(cache_dir).expanduser().absolute()
    if manifest is None:
        wanted: dict[str, str | None] = {e.relpath: None for e in list_files(uri, config)}
    else:
        wanted = {_relpath(rel, uri): sha.lower() for rel, sha in manifest.items()}
    for rel, expected in sorted(wanted.items()):
        src_uri, target = join_uri(uri, rel), cache / rel
        if expected and target.is_file() and sha256_file(target) == expected:
            continue
        fs, src_path = filesystem_for(src_uri, config)
        with _errors(src_uri), fs.open_input_stream(src_path) as src, open_output(target) as dst:
            actual = _copy(src, dst)
            if expected and actual != expected:
                raise ChecksumMismatchError(
                    f"{src_uri}: sha256 {actual} does not match the manifest's {expected} "
                    f"for {rel!r}"
                )
    return cache
